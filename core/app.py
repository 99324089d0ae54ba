"""The daemon: assembles bus, broker, journal, agents and the MQTT bridge, runs until a signal.

Start order: embedded venues (default mode) -> bus -> journal -> IB connection -> agents ->
MQTT bridge -> status online. SIGINT/SIGTERM: stop intake (later proposals stay unacknowledged
in the broker's session for the next start), decide the ones taken in, finish placements in
flight, drain the bus, publish status offline, close everything, exit 0. SIGHUP: reload limits.
Exit codes: 0 clean stop, 2 configuration error, 3 IB unreachable, 4 MQTT broker unreachable,
5 journal unusable (corrupt, truncated, unreadable, unwritable, made for another mode or IB
account, or a write failed while running: intake stops, the daemon stops as on SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from bracketgate.adapters.journal import encode as encode_payload
from bracketgate.adapters.journal_state import scope_text
from bracketgate.bus.errors import BrokerConnectError, ConfigError, MqttError
from bracketgate.bus.messages import (
    Alert,
    ConnectionState,
    ControlCommand,
    RiskDecision,
    Status,
    TradeProposal,
    TradingStateChanged,
)
from bracketgate.config.settings import Settings, describe_mode, load_settings
from bracketgate.core import bounds, gctune, memdump
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.crashpoints import crash_point
from bracketgate.core.logs import configure_logging, get_logger
from bracketgate.core.sdnotify import sd_notify

log = get_logger("bracketgate")

EXIT_OK, EXIT_CONFIG, EXIT_IB, EXIT_MQTT, EXIT_JOURNAL = 0, 2, 3, 4, 5
CHECKPOINT_EVERY_S = 30.0   # the journal's recovery checkpoint is moved forward this often
STATUS_EVERY_S = 15.0       # the retained status is refreshed this often (uptime, heartbeat)
ID_PRUNE_EVERY_S = 3600.0   # proposal_ids older than the retention are forgotten this often


class Daemon:
    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.stop_event = asyncio.Event()
        self.started_at = time.monotonic()
        self.mode = settings.mode
        self.ib_host = settings.ib_host
        self.ib_port = settings.ib_port
        self.mqtt_url = settings.mqtt_url
        self.embedded_tws: Any = None
        self.agents: Any = None          # config/agents.py AgentsFile, when AGENTS_FILE is set
        self.exit_code = EXIT_OK
        self._connected_once = False
        self.observer: Any = None        # core/metrics.py: metrics, readiness, the dashboard

    def status(self, state: str, detail: str | None = None) -> Status:
        gov = getattr(self, "governor", None)
        broker = getattr(self, "broker", None)
        return Status(
            state=state,  # type: ignore[arg-type]
            mode=self.mode,  # type: ignore[arg-type]
            trading_state=gov.state if gov is not None else None,
            halted_scopes=scope_text(gov.scoped_halts) if gov is not None else None,
            connection=broker.state if broker is not None else ConnectionState.DISCONNECTED,
            detail=detail, ts=self.clock.now(),
            **(self.observer.status_fields() if self.observer is not None else {}),
        )

    async def run(self) -> int:
        from bracketgate.adapters.journal import JournalError
        from bracketgate.config.agents import load_agents
        from bracketgate.config.limits import load_limits

        s = self.settings
        try:
            s.validate_live_guard()
            limits = load_limits(s.risk_limits_file)
            self.agents = load_agents(s.agents_file) if s.agents_file is not None else None
        except ConfigError as e:
            log.error("config_invalid", error=str(e), code="CONFIG")
            return EXIT_CONFIG
        if self.agents is not None:
            log.info("agents_loaded", path=str(s.agents_file), agents=len(self.agents.agents),
                     enabled=sum(e.enabled for e in self.agents.agents.values()))

        try:
            return await self._run(s, limits)
        except (JournalError, sqlite3.Error) as e:  # at start-up: refuse, one line, no traceback
            return _journal_refused(s.journal_path, e)

    async def _run(self, s: Settings, limits: Any) -> int:
        from bracketgate.adapters.ib import IBBroker
        from bracketgate.adapters.journal import Journal, JournalError
        from bracketgate.agents.execution import ExecutionAgent
        from bracketgate.agents.portfolio import PortfolioMonitor
        from bracketgate.agents.risk import RiskGovernor
        from bracketgate.bus.bus import Bus
        from bracketgate.bus.mqtt import MqttBridge

        mode_line = describe_mode(s)
        async with AsyncExitStack() as stack:
            # ---- embedded venues (default mode: no IB and no MQTT configured)
            if self.ib_host is None:
                from bracketgate.sim.server import PaperTWS

                tws = PaperTWS(host="127.0.0.1", port=self.ib_port or _port_or_free(4002),
                               control_port=_port_or_free(4102), tick_interval=1.0)
                await tws.start()
                stack.push_async_callback(tws.stop)
                self.embedded_tws = tws
                self.ib_host, self.ib_port = "127.0.0.1", tws.port
            bridge_url: str | None = None
            if self.mqtt_url is None:
                from bracketgate.adapters.embedded_broker import EmbeddedBroker

                broker_srv = EmbeddedBroker(host="127.0.0.1", port=_port_or_free(1883),
                                            credentials_file=s.data_dir / "default" / "mqtt-credentials.json")
                try:
                    await stack.enter_async_context(broker_srv)
                except MqttError as e:   # its port, or a credentials file others can read
                    log.error("embedded_broker_failed", error=str(e))
                    print(f"bracketgate: embedded MQTT broker: {e}", file=sys.stderr)
                    return EXIT_MQTT
                self.mqtt_url = broker_srv.url                   # no secret: logged, endpoints.json
                bridge_url = broker_srv.login_url("daemon")     # the daemon's own login
            # the one line a person cannot miss: what this process trades against
            log.warning(f"=== {mode_line} ===", mode=self.mode, ib=f"{self.ib_host}:{self.ib_port}",
                        mqtt=_safe_url(self.mqtt_url),
                        sim_control_port=getattr(self.embedded_tws, "control_port", None))

            # ---- the HTTP port (dashboard, /metrics, /healthz): up first, answering 503 meanwhile
            from bracketgate.core.http import start_http
            from bracketgate.core.metrics import Observer

            self.observer = observer = Observer(mode=self.mode, prefix=s.mqtt_prefix,
                                                clock=self.clock, known_agents=self._agent_ids)
            observer.stopping = self.stop_event.is_set
            try:
                http = await start_http(s, observer)
            except ConfigError as e:
                log.error("http_unavailable", error=str(e), code=e.code)
                print(f"bracketgate: {e}", file=sys.stderr)
                return EXIT_CONFIG
            if http is not None:
                stack.push_async_callback(http.stop)
            if self.mode == "default" or (http is not None and s.http_port == 0):
                self._write_endpoints()
                stack.callback(self._remove_endpoints)

            # ---- core
            bus = Bus(clock=self.clock)
            await bus.start()
            stack.push_async_callback(bus.close)
            observer.attach(bus)
            _refuse_legacy_journal(s)
            journal = await Journal.open(s.journal_path, self.clock,
                                         on_write_failure=self._journal_failed)
            stack.push_async_callback(journal.close)
            # made for this mode (and account, when configured; else checked at the first connect)
            await journal.claim(mode=self.mode, account=s.ib_account)
            await journal.prune_ids(self.clock.now()
                                    - timedelta(days=limits.proposal_id_retention_days))

            broker = IBBroker(
                host=self.ib_host, port=int(self.ib_port), client_id=s.ib_client_id,
                account=s.ib_account or "", publish=bus.publish, clock=self.clock,
                connect_timeout=s.ib_connect_timeout, live_ok=s.ib_live,
                backoff_cap=s.ib_reconnect_max_s, max_msgs_per_s=s.ib_max_msgs_per_s,
                max_market_data_lines=s.ib_max_market_data_lines,
                trade_retention_s=s.ib_trade_retention_s,
            )
            self.broker = broker
            # executions journaled (IB reports the day's again at each connect): looked up from
            # an index alone at each executions sync, not held (adapters/ib_execs.py)
            t_load = time.monotonic()
            broker.journaled_execs = journal.journaled_exec_ids
            monitor = PortfolioMonitor(bus, broker, clock=self.clock)
            monitor.attach()
            execution = ExecutionAgent(bus, broker, journal=journal, clock=self.clock,
                                       guard_action=s.unprotected_fill_action)
            execution.attach()
            # recovery: earlier runs' intents give attribution and the ids never to reuse;
            # the book is rebuilt from IB (by orderRef) before the broker reports READY
            intents_loaded = await execution.load_journal()
            broker.note_order_ids(execution.max_order_id_in_journal())
            log.info("journal_loaded", intents=intents_loaded,
                     ms=round((time.monotonic() - t_load) * 1000, 1))
            observer.watch(broker=broker, execution=execution, journal=journal, monitor=monitor)
            # first of the hooks: nothing is reconciled against a journal of another account
            broker.add_reconcile_hook(self._account_check(journal, broker))
            broker.add_reconcile_hook(execution.reconcile)
            # IB's completed orders are read at start-up only as recovery needs them (ib_startup.py)
            broker.startup.use(expected=execution.expected_at_ib, journal=journal)
            self.governor = governor = RiskGovernor(limits, self.clock, contract_info=broker.cached_contract,
                                                   agents=self.agents)
            governor.use_id_memory(journal.first_seen)   # ids the decision memory forgot
            _attach_governor(governor, bus, broker, monitor)
            # a proposal_id without a decision is first looked up at IB (crash windows, lost journal)
            governor.use_prior_lookup(execution.prior_placement)
            # the order intent is written while IB answers the what-if (agents/staging.py)
            governor.use_staging(execution.stage, execution.unstage)
            _attach_journal(bus, journal)
            # the operator's HALT / REDUCE and flatten's scoped halts survive a restart: saved
            # before published, restored here before anything is decided (adapters/journal_state.py)
            from bracketgate.adapters.journal_state import StateKeeper, TradingStateJournal

            keeper = StateKeeper(governor, TradingStateJournal(journal), self.clock)
            keeper.attach()
            if (restored_ev := await keeper.restore()) is not None:
                await bus.publish(restored_ev)

            from bracketgate.core.recovery import recover_from_journal

            # earlier runs' decisions (idempotency) and fills (per-agent attribution); the
            # proposals journaled (so acknowledged to the broker) but never decided come back,
            # and so do decisions journaled but never confirmed delivered by the broker
            recovered = await recover_from_journal(journal, governor, self.clock)

            # bracket lifecycle commands (issue 13): cancel / amend / trail / close
            from bracketgate.adapters.ib_lifecycle import BracketOrders
            from bracketgate.adapters.journal_commands import CommandJournal
            from bracketgate.agents.commands import CommandDesk

            desk = CommandDesk(bus, governor, execution, broker, BracketOrders(broker),
                               journal=CommandJournal(journal), clock=self.clock)
            desk.attach()
            from bracketgate.agents.flatten import Flattener

            flattener = Flattener(bus, desk, execution, clock=self.clock)
            flattener.attach()
            _attach_flatten_journal(bus, journal)

            # a proposal is acknowledged to the broker only once journaled (FULL), see bus/mqtt.py
            bridge = MqttBridge(s, bus, self.clock, url=bridge_url or self.mqtt_url,
                                on_command=desk.take_in,
                                on_proposals=observer.timing(_journal_proposal(journal)),
                                on_decisions=observer.counting(_journal_decision(journal)),
                                on_delivered=_journal_delivery(journal, desk),
                                seen_id=_journal_knows(journal),
                                authenticator=_authenticator(governor))
            # on the bus before the first reconcile, so what it publishes (fills missed while
            # down, leg states, alerts) reaches the agents once MQTT is connected
            bridge.attach()
            observer.watch(governor=governor, bridge=bridge)

            try:
                await broker.start()
            except BrokerConnectError as e:
                log.error("ib_unreachable", error=e.message, code=e.code, host=self.ib_host, port=self.ib_port)
                print(f"bracketgate: {e.message}", file=sys.stderr)
                return EXIT_IB
            except JournalError:   # the account check refused this journal
                await broker.close()
                raise
            self._connected_once = True
            stack.push_async_callback(broker.close)
            await monitor.start()
            stack.push_async_callback(monitor.stop)

            try:
                await stack.enter_async_context(bridge)
                await bridge.wait_connected(timeout=s.ib_connect_timeout)
            except MqttError as e:
                if bridge.last_refusal is not None:   # it answered, and refused our login
                    log.error("mqtt_not_authorized", code=bridge.last_refusal,
                              url=_safe_url(self.mqtt_url))
                    print(f"bracketgate: MQTT broker at {_safe_url(self.mqtt_url)} refused the "
                          f"login: not authorized (check MQTT_URL's user:password)", file=sys.stderr)
                    return EXIT_MQTT
                log.error("mqtt_unreachable", error=str(e), code=e.code, url=_safe_url(self.mqtt_url))
                print(f"bracketgate: MQTT broker unreachable: {e}", file=sys.stderr)
                return EXIT_MQTT
            for decision in recovered.undelivered_decisions:
                await bus.publish(decision)      # journaled, then the daemon died before the PUBACK
            for fill in recovered.undelivered_fills:
                await bus.publish(fill)          # likewise (the governor counts an exec_id once)
            for proposal in recovered.undecided:
                await bridge.resubmit(proposal)  # acknowledged, then the daemon died: decide now
            await desk.recover()   # commands taken in and never answered: answered from IB's state

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_stop_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
            loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
            loop.add_signal_handler(signal.SIGUSR2, memdump.dump, s.data_dir)
            memdump.register_sizes("daemon", bounds.sizer(   # its id-keyed structures, by name
                broker=broker, execution=execution, governor=governor, observer=observer,
                journal=journal))

            await bus.publish(self.status("online"))
            self._follow_status(bus)
            keeper.on_scope_saved = lambda: self._republish_status(bus)   # a scoped halt's status
            pruner = asyncio.create_task(self._prune_ids(journal), name="journal-prune-ids")
            stack.push_async_callback(_cancel, pruner)
            observer.running = True
            for task in (asyncio.create_task(observer.run(self.stop_event), name="observer"),
                         asyncio.create_task(self._refresh_status(bus), name="status-refresh")):
                stack.push_async_callback(_cancel, task)
            log.info("ready", startup_ms=round((time.monotonic() - self.started_at) * 1000, 1),
                     prefix=s.mqtt_prefix, trading_state=str(governor.state))
            sd_notify(f"READY=1\nSTATUS=ready prefix={s.mqtt_prefix}")   # systemd Type=notify
            frozen = gctune.freeze()   # start-up's objects: never walked by a collection again
            log.debug("gc_frozen", objects=frozen)
            collector = asyncio.create_task(gctune.full_collections(), name="gc-full")
            stack.push_async_callback(_cancel, collector)   # old cycles freed (core/gctune.py)

            await self.stop_event.wait()

            # ---- graceful stop
            log.info("stopping", reason="signal")
            sd_notify("STOPPING=1")
            await bus.publish(self.status("stopping"))
            await _step("stop_intake", bridge.stop_intake(), 6.0)
            # acknowledged proposals are decided before we go (or resubmitted at the next start)
            await _step("proposals_queued", _drain(bus, 5.0), 6.0)
            await _step("governor_in_flight", governor.aclose(), 10.0)
            await _step("placements_in_flight", execution.wait_idle(10.0), 11.0)
            await _step("commands_in_flight", desk.wait_idle(10.0), 11.0)
            await _step("flatten_in_flight", flattener.wait_idle(20.0), 21.0)
            try:
                await bus.drain(5.0)
            except Exception as e:  # a drain timeout must not block the exit
                log.warning("bus_drain_incomplete", error=str(e))
            await bus.publish(self.status("offline", "clean shutdown"))
            try:
                await bus.drain(2.0)
            except Exception as e:
                log.warning("bus_drain_incomplete", error=str(e))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped", working_orders_stay_at_ib=True, exit_code=self.exit_code)
        return self.exit_code

    # ------------------------------------------------------------------ the journal's guards

    def _journal_failed(self, exc: BaseException) -> None:
        """A journal write failed while running: fail closed. Intake stops (proposals stay in
        the broker's session), the daemon stops as on SIGTERM and exits EXIT_JOURNAL."""
        if self.exit_code == EXIT_JOURNAL:
            return
        self.exit_code = EXIT_JOURNAL
        from bracketgate.adapters.journal import _cause

        path = self.settings.journal_path
        log.error("journal_write_failed", path=str(path), cause=_cause(exc), code="JOURNAL",
                  action="stopping intake and the daemon")
        print(f"bracketgate: journal {path}: write failed ({_cause(exc)}); stopping",
              file=sys.stderr)
        self.stop_event.set()

    def _account_check(self, journal: Any, broker: Any) -> Any:
        """Reconcile hook: the journal is claimed for the IB account the connection is for
        (recorded at the first connect). Another account refuses: at start-up the daemon does
        not start; on a later reconnect it stops (EXIT_JOURNAL) before anything is reconciled."""
        from bracketgate.adapters.journal import JournalOwnerError

        async def check() -> None:
            try:
                await journal.claim(mode=self.mode, account=broker.account or None)
            except JournalOwnerError as e:
                if self._connected_once:   # a reconnect: broker.start() is not there to raise
                    self._journal_failed(e)
                raise

        return check

    async def _prune_ids(self, journal: Any) -> None:
        """Journal upkeep: the recovery checkpoint moves forward every CHECKPOINT_EVERY_S (a
        restart reads only the tail since); every ID_PRUNE_EVERY_S proposal_ids older than
        the retention are forgotten and events older than journal_retention_days deleted
        (the limits may change on SIGHUP). Stopping moves the checkpoint a last time."""
        from bracketgate.core.recovery import LOOKBACK

        last_prune = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self.stop_event.wait(), CHECKPOINT_EVERY_S)
                stopping = True
            except TimeoutError:
                stopping = False
            try:
                await journal.checkpoint_recovery(self.clock.now() - LOOKBACK)
            except Exception as e:  # a checkpoint not moved only makes the next start read more
                log.warning("journal_checkpoint_failed", error=repr(e))
            if stopping:
                return
            if time.monotonic() - last_prune < ID_PRUNE_EVERY_S:
                continue
            last_prune = time.monotonic()
            lim = self.governor.limits
            try:
                await journal.prune_ids(self.clock.now()
                                        - timedelta(days=lim.proposal_id_retention_days))
                await journal.compact(self.clock.now() - timedelta(
                    days=max(lim.journal_retention_days, lim.proposal_id_retention_days)))
            except Exception as e:  # a failed prune keeps ids longer: never unsafe
                log.warning("journal_prune_failed", error=repr(e))

    def _follow_status(self, bus: Any) -> None:
        """The retained {prefix}/status follows the trading state and the IB connection."""
        from bracketgate.bus.messages import BrokerConnection

        async def republish(_msg: Any) -> None:
            await self._republish_status(bus)

        bus.subscribe(TradingStateChanged, republish, name="status")
        bus.subscribe(BrokerConnection, republish, name="status")

    async def _republish_status(self, bus: Any) -> None:
        if self.stop_event.is_set():
            return  # stopping / offline are published by the shutdown sequence
        ready = self.broker.state is ConnectionState.READY
        await bus.publish(self.status("online" if ready else "degraded",
                                      None if ready else f"IB {self.broker.state.value}"))

    async def _refresh_status(self, bus: Any) -> None:
        """The retained status again every STATUS_EVERY_S: its uptime, heartbeat round trip,
        reconnects and journal lag stay current while nothing else changes."""
        while True:
            try:
                await asyncio.wait_for(self.stop_event.wait(), STATUS_EVERY_S)
                return
            except TimeoutError:
                pass
            ready = self.broker.state is ConnectionState.READY
            await bus.publish(self.status("online" if ready else "degraded",
                                          None if ready else f"IB {self.broker.state.value}"))

    def _agent_ids(self) -> list[str]:
        """The agents the agents file names (the open-brackets metric's label set, with those
        seen with a bracket open)."""
        gov = getattr(self, "governor", None)
        agents = gov.agents if gov is not None else self.agents
        return sorted(agents.agents) if agents is not None else []

    def _endpoints_path(self) -> Any:
        return self.settings.data_dir / "endpoints.json"

    def _write_endpoints(self) -> None:
        """Default mode: tell operator tools where the embedded venues listen."""
        import json

        self.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        http = getattr(self.observer, "http_url", None)
        if self.mode != "default":   # paper/live with HTTP_PORT=0: only where the port is
            self._endpoints_path().write_text(json.dumps({"http": http, "mode": self.mode,
                                                          "mqtt_prefix": self.settings.mqtt_prefix},
                                                         indent=2))
            return
        self._endpoints_path().write_text(json.dumps({
            "mqtt_url": self.mqtt_url, "mqtt_prefix": self.settings.mqtt_prefix,
            "ib_host": self.ib_host, "ib_port": self.ib_port,
            "sim_control_port": getattr(self.embedded_tws, "control_port", None),
            "http": http,
        }, indent=2))

    def _remove_endpoints(self) -> None:
        self._endpoints_path().unlink(missing_ok=True)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        log.info("signal_received", signal=sig.name)
        self.stop_event.set()

    def _on_reload_signal(self) -> None:
        path = self.settings.risk_limits_file
        try:
            changed = self.governor.reload_limits(path)
            log.info("limits_reloaded", path=str(path), changed=changed)
        except ConfigError as e:
            log.error("limits_reload_failed", path=str(path), error=str(e), code="CONFIG")
        agents_path = self.settings.agents_file
        if agents_path is not None:   # an invalid file keeps the agents in force (logged)
            try:
                self.governor.reload_agents(agents_path)
            except ConfigError:
                pass


def _authenticator(governor: Any) -> Any:
    """Signed messages (bus/auth.py) whenever an agents file is in force: agents with a key and
    the operator (once it has one) must sign; keys follow the file across SIGHUP reloads."""
    from bracketgate.bus.auth import Authenticator

    if governor.agents is None:
        return None

    def key_for(agent_id: str) -> bytes | None:
        agents = governor.agents
        return agents.key_for(agent_id) if agents is not None else None

    def operator_key() -> bytes | None:
        agents = governor.agents
        return agents.operator_key if agents is not None else None

    return Authenticator(key_for, operator_key)


def _dump_tasks() -> None:  # (SIGUSR2: core/memdump.py, where the memory is)
    """SIGUSR1: log every asyncio task with where it is waiting (for a daemon that seems stuck)."""
    import io

    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(limit=8, file=buf)
        log.warning("task_dump", task=task.get_name(), stack=buf.getvalue()[-2000:])


def _port_or_free(preferred: int) -> int:
    """The conventional port when it is free on loopback (so mosquitto_pub/ib scripts just
    work), else 0 = any free port (the endpoints file says which)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred


def _safe_url(url: str | None) -> str | None:
    if not url or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _attach_governor(governor: Any, bus: Any, broker: Any, monitor: Any) -> None:
    """The governor meets IB only through these two callables (both via the broker port)."""
    from bracketgate.agents.rules import deny, quote_for
    from bracketgate.bus.errors import BrokerError
    from bracketgate.bus.messages import DenialCode

    async def prepare(proposal: TradeProposal) -> None:
        if not broker.is_ready:
            return  # the gate rejects on the broker state itself
        try:
            contract = await broker.resolve_contract(proposal)
        except BrokerError as e:
            log.warning("contract_resolution_failed", proposal_id=proposal.proposal_id,
                        agent_id=proposal.agent_id, code=e.code, error=e.message)
            return
        # every entry needs the quote: a MKT entry is priced at it, every price is banded by it
        # (a combo's, from its legs' quotes: agents/combo_risk.py)
        quoted_legs = (contract.legs or [contract]) if contract is not None else []
        hold = {q.con_id for q in quoted_legs}   # one leg's line is never given up for another's
        for quoted in quoted_legs:
            snap = governor.snapshot
            stale = snap is not None and quote_for(snap, quoted.con_id) is not None
            if stale and broker.touch_quote(quoted.con_id):
                continue
            # hand the governor a snapshot with the quote now, not after a bus hop; a
            # contract IB has no quote for is not rebuilt for at every proposal, but a given-up
            # line's is (its quote must leave the snapshot at once, this one's or another's)
            evicted = broker.lines.evictions
            if await broker.ensure_quote(quoted, hold=hold) is not None or stale \
                    or broker.lines.evictions != evicted:
                for ev in governor.on_snapshot(monitor.build()):
                    await bus.publish(ev)
            refusal = broker.quote_refusal(quoted.con_id)
            if refusal is not None:   # no line to be had: the rejection says so
                governor.explain_quote(proposal.proposal_id, deny(
                    DenialCode.QUOTE_UNAVAILABLE, refusal.limit, refusal.in_use,
                    field="market_data_lines", detail=refusal.detail()))
                return

    async def whatif(bracket: Any) -> dict[str, Any]:
        return await broker.what_if(bracket)

    # the quotes of pending reservations (a combo's legs) keep their market-data lines
    broker.pin_quotes(governor.quote_needs)
    # the order-rate rule reads the IB pacer's headroom (one count of what goes to IB)
    governor.attach(bus, prepare=prepare, whatif=whatif, order_budget=broker.pacer)


async def _step(name: str, aw: Any, timeout: float) -> None:
    """One bounded shutdown step: a step that hangs is logged and skipped, never blocks exit."""
    try:
        await asyncio.wait_for(aw, timeout)
        log.info("shutdown_step_done", step=name)
    except TimeoutError:
        log.warning("shutdown_step_timeout", step=name, timeout_s=timeout)


async def _drain(bus: Any, timeout: float) -> None:
    from bracketgate.bus.errors import DrainTimeout

    try:
        await bus.drain(timeout)
    except DrainTimeout as e:
        log.warning("bus_drain_incomplete", error=str(e))


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _journal_refused(path: Path, e: BaseException) -> int:
    """One JSON log line and one stderr line naming the file and the cause; EXIT_JOURNAL."""
    from bracketgate.adapters.journal import JournalOpenError, JournalOwnerError, _cause

    if isinstance(e, JournalOpenError | JournalOwnerError):
        line, cause = str(e), getattr(e, "cause", "made for another mode or account")
        path = Path(e.path)
    else:
        cause = _cause(e)
        line = f"journal {path}: {cause}"
    log.error("journal_unusable", path=str(path), cause=cause, error=line, code="JOURNAL")
    print(f"bracketgate: {line}", file=sys.stderr)
    return EXIT_JOURNAL


def _refuse_legacy_journal(s: Settings) -> None:
    """Before journals were per mode, every mode shared DATA_DIR/journal.sqlite: a paper or live
    run finding it (and not its own) must not silently start with an empty memory."""
    from bracketgate.adapters.journal import JournalOpenError

    legacy = s.data_dir / "journal.sqlite"
    if s.journal_path_explicit or s.mode == "default" or not legacy.exists() \
            or s.journal_path.exists():
        return
    raise JournalOpenError(legacy, f"an earlier version's journal, shared by every mode; this "
                           f"{s.mode} run now uses {s.journal_path}. Set JOURNAL_PATH={legacy} "
                           "to keep it (it is checked against this mode and account) or move "
                           "it away")


def _journal_knows(journal: Any) -> Any:
    """The bridge's seen_id hook: the journal has this proposal_id (taken in or answered)."""

    async def knows(proposal_id: str) -> bool:
        return await journal.first_seen(proposal_id) is not None

    return knows


def _journal_proposal(journal: Any) -> Any:
    """The bridge's on_proposals hook: the proposals that came in together are journaled
    durably (FULL), in one transaction and one commit, before the broker is told they arrived;
    once per proposal_id (the broker and agents may deliver one again; the look-up runs inside
    the write's own transaction, so nothing comes in between)."""

    async def on_proposals(proposals: list[TradeProposal]) -> None:
        await journal.record_many([
            {"kind": "proposal", "proposal_id": p.proposal_id, "agent_id": p.agent_id,
             "payload": p, "durable": True, "once": True} for p in proposals])
        crash_point("proposal_journaled")

    return on_proposals


def _journal_decision(journal: Any) -> Any:
    """The bridge's on_decisions hook: every decision is journaled (FULL, a DURABLE_KIND) before
    it is published, so a restart answers a repeat with the very decision the agent saw; the
    decisions that are ready together share one commit. Each is encoded once: the bridge
    publishes the bytes journaled (returned here)."""

    async def on_decisions(decisions: list[RiskDecision]) -> list[bytes]:
        encoded = [encode_payload(d) for d in decisions]
        await journal.record_many([
            {"kind": "decision", "proposal_id": d.proposal_id, "agent_id": d.agent_id,
             "payload": e} for d, e in zip(decisions, encoded)])
        crash_point("decision_journaled")
        return [e.text.encode() for e in encoded]

    return on_decisions


_DELIVERED_DECISION = encode_payload({"delivered": "decision"})   # the same payload every time


def _journal_delivery(journal: Any, desk: Any = None) -> Any:
    """The bridge's delivery hook: the broker has these decisions and fills (PUBACK); one
    journal operation for all of them (command answers: the commands table's)."""

    async def delivered(deliveries: list[tuple[str, str, str, str]]) -> None:
        answers = [(aid, key) for kind, _, aid, key in deliveries if kind == "command"]
        if answers:
            if desk is not None:
                await desk.delivered(answers)
            deliveries = [d for d in deliveries if d[0] != "command"]
            if not deliveries:
                return
        if any(kind == "decision" for kind, *_ in deliveries):
            crash_point("decision_delivered")
        await journal.record_many([
            {"kind": "ack", "proposal_id": pid, "agent_id": aid,
             "payload": _DELIVERED_DECISION if kind == "decision"
             else {"delivered": kind, "exec_id": key}}
            for kind, pid, aid, key in deliveries])

    return delivered


def _attach_journal(bus: Any, journal: Any) -> None:
    """Control commands go to the journal as they cross the bus (trading-state changes are
    saved by the governor's hook before they are published: adapters/journal_state.py;
    proposals and decisions are journaled by the MQTT bridge's hooks, before they are
    acknowledged or published: `_journal_proposal`, `_journal_decision`)."""

    async def control(msg: ControlCommand) -> None:
        await journal.record("note", payload={"control": msg.model_dump(mode="json")})

    async def refused(msg: Alert) -> None:
        if msg.code in _AUTH_CODES:   # a control command the bridge refused (bus/auth.py)
            await journal.record("alert", payload=msg)

    bus.subscribe(ControlCommand, control, name="journal.control")
    bus.subscribe(Alert, refused, name="journal.refused")


_AUTH_CODES = frozenset({"AUTH_REQUIRED", "BAD_SIGNATURE", "SIGNATURE_REPLAYED"})


def _attach_flatten_journal(bus: Any, journal: Any) -> None:
    """What a flatten did (agents/flatten.py) goes to the journal as it crosses the bus."""
    from bracketgate.bus.commands import FlattenReport

    async def report(msg: FlattenReport) -> None:
        await journal.record("note", payload={"flatten": msg.model_dump(mode="json")},
                             durable=True)

    bus.subscribe(FlattenReport, report, name="journal.flatten")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="run.py daemon", description="bracketgate daemon")
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(_env_file=args.env_file) if args.env_file != ".env" else load_settings()
    except ConfigError as e:
        configure_logging("auto")
        log.error("config_invalid", error=str(e), code="CONFIG")
        print(f"bracketgate: invalid configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    gctune.tune()   # collections rare enough not to catch every burst in flight (core/gctune.py)
    os.umask(0o077)   # what the daemon creates (journal, endpoints file) is the owner's only
    try:
        return asyncio.run(Daemon(settings).run())
    except KeyboardInterrupt:
        return EXIT_OK
