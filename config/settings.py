"""Process settings: environment variables and a `.env` file, read once at start, frozen.

`load_settings()` is the entry point: it turns every validation problem into one ConfigError.
Modes: `default` (nothing configured: embedded paper TWS + embedded MQTT broker), `paper`,
`live` (IB port 4001/7496 or IB_LIVE; live ports demand the explicit IB_LIVE=true opt-in).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from bracketgate.bus.errors import ConfigError

Mode = Literal["default", "paper", "live"]

LIVE_PORTS = (4001, 7496)    # IB Gateway live, TWS live
PAPER_PORTS = (4002, 7497)   # IB Gateway paper, TWS paper
DEFAULT_IB_PORT = 4002
MQTT_SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
TLS_SCHEMES = {"mqtts", "ssl"}

# Variables in a .env file with one of these prefixes must be ours: a typo there is an error.
# Anything else in the file (other tools' variables) is ignored.
# (not "http_": HTTP_PROXY and friends belong to other tools; HTTP_* are matched by name)
OWN_PREFIXES = ("ib_", "mqtt_", "log_", "risk_", "journal_", "data_", "portfolio_")


DEFAULT_LIMITS_FILE = Path(__file__).resolve().parent / "limits.default.toml"

class _OwnDotEnvSource(DotEnvSettingsSource):
    """The .env source, keeping only our variables (unknown ones with our prefixes stay, and fail)."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        fields = self.settings_cls.model_fields
        return {k: v for k, v in data.items() if k in fields or k.lower().startswith(OWN_PREFIXES)}


class Settings(BaseSettings):
    """Every knob of the daemon. Env var = field name upper-cased (IB_HOST, MQTT_URL, ...)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", frozen=True, extra="forbid",
        case_sensitive=False, validate_default=True,
    )

    # --- Interactive Brokers
    ib_host: str | None = None                      # None = embedded paper TWS on loopback
    ib_port: int | None = Field(None, ge=1, le=65535)  # None: 4002 with a host, free port embedded
    ib_client_id: int = Field(1, ge=0)
    ib_account: str | None = None
    ib_live: bool = False                            # explicit opt-in for live ports
    ib_connect_timeout: float = Field(10.0, gt=0)
    ib_reconnect_max_s: float = Field(0.5, gt=0, le=60)   # cap of the reconnect backoff
    ib_max_msgs_per_s: float = Field(40.0, ge=5, lt=50)   # the IB pacer's budget (IB's cap: 50/s)
    # quotes streamed at once (IB's default cap is 100 lines per account, shared with other tools)
    ib_max_market_data_lines: int = Field(90, ge=1, le=10_000)
    # a finished trade (every leg terminal) is dropped from the IB library's books this long
    # after it finished (adapters/ib_prune.py); 0 keeps every trade until the next disconnect
    ib_trade_retention_s: float = Field(60.0, ge=0)
    # an entry filled while its stop is not working at IB: protective stop, flatten, or alert only
    unprotected_fill_action: Literal["protect", "flatten", "alert"] = "protect"

    # --- MQTT
    mqtt_url: str | None = None                      # None = embedded broker on loopback
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_tls_insecure: bool = False
    mqtt_client_id: str = Field("bracketgate", min_length=1, max_length=64)
    mqtt_prefix: str = Field("bracketgate", min_length=1, max_length=128)
    mqtt_max_payload: int = Field(16 * 1024, ge=256, le=1024 * 1024)
    mqtt_keepalive: int = Field(30, ge=5, le=3600)
    mqtt_outbox_size: int = Field(10_000, ge=1)      # outgoing messages kept while disconnected
    portfolio_publish_interval: float = Field(0.5, ge=0)

    # --- the HTTP port (core/http.py: dashboard, /metrics, /healthz); read-only, loopback
    http_host: str = "127.0.0.1"
    # None: a free port in default mode, no HTTP server in paper/live; 0: a free port (both
    # written to DATA_DIR/endpoints.json as "http")
    http_port: int | None = Field(None, ge=0, le=65535)
    http_allow_remote: bool = False                  # explicit opt-in for a non-loopback HTTP_HOST

    # --- logs, files
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    risk_limits_file: Path = DEFAULT_LIMITS_FILE        # next to this module, whatever the cwd
    # the agents file (config/agents.py): who may trade, per-agent limits and keys; None = no
    # registry (every agent_id not named in the limits file shares one budget)
    agents_file: Path | None = None
    # unset: each mode keeps its own journal, DATA_DIR/<mode>/journal.sqlite (`_journal_per_mode`);
    # an explicit JOURNAL_PATH is honoured, and still checked against the mode and IB account
    # it was made for (adapters/journal.py `claim`)
    journal_path: Path = Path("data/default/journal.sqlite")
    data_dir: Path = Path("data")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = dotenv_settings
        if isinstance(dotenv_settings, DotEnvSettingsSource):
            dotenv = _OwnDotEnvSource(
                settings_cls, env_file=dotenv_settings.env_file,
                env_file_encoding=dotenv_settings.env_file_encoding,
            )
        return init_settings, env_settings, dotenv, file_secret_settings

    # ------------------------------------------------------------------ validation

    @field_validator("ib_host", "mqtt_url", "ib_account", "mqtt_username", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("mqtt_password", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file",
                     "agents_file", mode="before")
    @classmethod
    def _empty_secret_or_path_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("ib_port", "http_port", mode="before")
    @classmethod
    def _empty_port_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("mqtt_prefix")
    @classmethod
    def _prefix_is_a_plain_topic(cls, v: str) -> str:
        if any(c in v for c in "+#\x00") or v.startswith("/") or v.endswith("/"):
            raise ValueError("MQTT_PREFIX may not contain '+', '#' or NUL, nor start/end with '/'")
        return v

    @field_validator("mqtt_client_id")
    @classmethod
    def _client_id_plain(cls, v: str) -> str:
        if any(c in v for c in "+#/\x00 "):
            raise ValueError("MQTT_CLIENT_ID may not contain '+', '#', '/', spaces or NUL")
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {v!r}")
        return level

    @model_validator(mode="before")
    @classmethod
    def _split_url_credentials(cls, data: Any) -> Any:
        """Move user:password out of MQTT_URL so the stored URL never carries a secret."""
        if not isinstance(data, dict):
            return data
        key = next((k for k in data if k.lower() == "mqtt_url"), None)
        url = data.get(key) if key else None
        if not isinstance(url, str) or not url.strip():
            return data
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in MQTT_SCHEMES:
            raise ValueError(f"MQTT_URL scheme must be one of {sorted(MQTT_SCHEMES)}, got {scheme!r}")
        if not parts.hostname:
            raise ValueError("MQTT_URL has no host")
        try:
            port = parts.port or MQTT_SCHEMES[scheme]
        except ValueError as exc:
            raise ValueError(f"MQTT_URL port is invalid: {exc}") from None
        data = dict(data)
        if parts.username is not None or parts.password is not None:
            for field_name, value in (("mqtt_username", parts.username), ("mqtt_password", parts.password)):
                if value is None:
                    continue
                value = unquote(value)
                given_key = next((k for k in data if k.lower() == field_name), None)
                given = data.get(given_key) if given_key else None
                if isinstance(given, SecretStr):
                    given = given.get_secret_value()
                if given not in (None, "") and given != value:
                    raise ValueError(f"MQTT_URL and {field_name.upper()} disagree; set only one")
                data[given_key or field_name] = value
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        data[key] = urlunsplit((scheme, f"{host}:{port}", parts.path, "", ""))
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_ib_port(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        host_key = next((k for k in data if k.lower() == "ib_host"), None)
        port_key = next((k for k in data if k.lower() == "ib_port"), None)
        host = data.get(host_key) if host_key else None
        port = data.get(port_key) if port_key else None
        if isinstance(host, str) and host.strip() and (port is None or (isinstance(port, str) and not port.strip())):
            data = dict(data)
            data[port_key or "ib_port"] = DEFAULT_IB_PORT
        return data

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("MQTT_CERT_FILE and MQTT_KEY_FILE go together")
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("MQTT_PASSWORD without MQTT_USERNAME")
        return self

    @model_validator(mode="after")
    def _http_loopback(self) -> Settings:
        if not self.http_allow_remote and not is_loopback_host(self.http_host):
            raise ValueError(f"HTTP_HOST={self.http_host!r} is not a loopback address: the "
                             "dashboard and /metrics have no login; set HTTP_ALLOW_REMOTE=true "
                             "to serve them beyond this machine (behind your own proxy)")
        return self

    @model_validator(mode="after")
    def _journal_per_mode(self) -> Settings:
        if "journal_path" not in self.model_fields_set:
            self.__dict__["journal_path"] = self.data_dir / self.mode / "journal.sqlite"
        return self

    # ------------------------------------------------------------------ derived

    @property
    def journal_path_explicit(self) -> bool:
        """JOURNAL_PATH was given (else the mode's own default under DATA_DIR)."""
        return "journal_path" in self.model_fields_set

    @property
    def mode(self) -> Mode:
        if self.ib_host is None and self.mqtt_url is None:
            return "default"
        if self.ib_live or self.ib_port in LIVE_PORTS:
            return "live"
        return "paper"

    @property
    def mqtt_host(self) -> str | None:
        return urlsplit(self.mqtt_url).hostname if self.mqtt_url else None

    @property
    def mqtt_port(self) -> int | None:
        return urlsplit(self.mqtt_url).port if self.mqtt_url else None

    @property
    def mqtt_tls(self) -> bool:
        """TLS when the URL says mqtts:// (or ssl://) or any TLS file/flag is given."""
        scheme = urlsplit(self.mqtt_url).scheme if self.mqtt_url else ""
        return scheme in TLS_SCHEMES or any(
            (self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_tls_insecure))

    @property
    def ib_is_live_port(self) -> bool:
        return self.ib_port in LIVE_PORTS

    def validate_live_guard(self) -> None:
        """Refuse a live IB port without the explicit IB_LIVE=true opt-in. Call at start."""
        if self.ib_host is not None and self.ib_is_live_port and not self.ib_live:
            raise ConfigError(
                f"IB_PORT={self.ib_port} is a LIVE trading port (4001 Gateway / 7496 TWS) but "
                "IB_LIVE is not true. Set IB_LIVE=true to trade real money, or use the paper "
                "port 4002 / 7497.", code="LIVE_GUARD")
        if self.ib_live and self.ib_host is None:
            raise ConfigError(
                "IB_LIVE=true but IB_HOST is not set: the embedded paper TWS cannot trade live. "
                "Set IB_HOST and IB_PORT (4001 / 7496) or drop IB_LIVE.", code="LIVE_GUARD")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (no name resolution: a name that may change is not trusted)."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# IBKR_* (the habit of IB Gateway automation scripts) are aliases of our IB_* variables: either
# name works, in the environment or in .env; both set to different values is a ConfigError.
IB_ALIASES = {"ib_host": "ibkr_host", "ib_port": "ibkr_port", "ib_client_id": "ibkr_client_id"}
TOOLS_CLIENT_ID_DEFAULT = 9001   # the operator tools' own IB client id (dump, smoke), by habit


def read_env_file(env_file: str | Path | None = ".env") -> dict[str, str]:
    """Every variable of a dotenv file, names lower-cased ({} when there is no such file)."""
    if env_file is None or not Path(env_file).is_file():
        return {}
    from dotenv import dotenv_values

    return {k.lower(): v for k, v in dotenv_values(env_file).items() if v is not None}


def settings_env(env_file: str | Path | None = ".env") -> dict[str, str]:
    """The variables every command sees: the .env file, overridden by the environment."""
    merged = read_env_file(env_file)
    merged.update({k.lower(): v for k, v in os.environ.items()})
    return merged


def _alias_overrides(env_file: str | Path | None) -> dict[str, str]:
    """IB_* values given only under their IBKR_* names; a disagreement is a ConfigError."""
    env = settings_env(env_file)
    out: dict[str, str] = {}
    for own, alias in IB_ALIASES.items():
        mine, theirs = env.get(own), env.get(alias)
        if theirs is None or not theirs.strip():
            continue
        if mine is not None and mine.strip() and mine.strip() != theirs.strip():
            raise ConfigError(
                f"{own.upper()}={mine.strip()} and {alias.upper()}={theirs.strip()} disagree "
                f"({alias.upper()} is an alias of {own.upper()}): set only one",
                code="ALIAS_CONFLICT")
        if mine is None or not mine.strip():
            out[own] = theirs.strip()
    return out


def load_settings(**overrides: Any) -> Settings:
    """Read env + .env (+ overrides, e.g. `_env_file=...`); every problem is one ConfigError.

    IBKR_HOST / IBKR_PORT / IBKR_CLIENT_ID stand for IB_HOST / IB_PORT / IB_CLIENT_ID."""
    env_file = overrides.get("_env_file", ".env")
    aliased = {k: v for k, v in _alias_overrides(env_file).items() if k not in overrides}
    try:
        return Settings(**aliased, **overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            lines.append(f"{loc}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(lines), code="INVALID_SETTINGS") from exc


def describe_mode(settings: Settings) -> str:
    """The one start-up line a person cannot miss. Never contains a password."""
    mode = settings.mode.upper()
    if settings.ib_host is None:
        ib = "embedded-paper-tws"
    else:
        ib = f"{settings.ib_host}:{settings.ib_port}"
        if settings.ib_account:
            ib += f" account={settings.ib_account}"
    mqtt = settings.mqtt_url or "embedded"
    if settings.mqtt_username:
        mqtt += f" user={settings.mqtt_username}"
    if settings.mqtt_tls:
        mqtt += " tls" + ("(insecure)" if settings.mqtt_tls_insecure else "")
    banner = "!!! LIVE TRADING — REAL MONEY !!! " if settings.mode == "live" else ""
    return f"{banner}MODE={mode} ib={ib} mqtt={mqtt} prefix={settings.mqtt_prefix}"


def tool_connection(settings: Settings, env_file: str | Path | None = ".env",
                    client_id: int | None = None) -> dict[str, Any]:
    """Where the operator tools (dump, smoke) connect, and why: host, port, client id, sources.

    Host/port: IB_HOST/IB_PORT (or IBKR_*) from the environment or .env; unset (default mode):
    the embedded paper TWS the daemon wrote to DATA_DIR/endpoints.json, else 127.0.0.1:4002.
    Client id: `client_id` (--client-id), else TOOLS_CLIENT_ID, else an IB_CLIENT_ID/IBKR_CLIENT_ID
    set in this command's environment, else 9001. An IB_CLIENT_ID only in .env is the daemon's
    own: the tools do not take it (they would collide with the running daemon)."""
    import json

    if settings.ib_host is not None:
        host, port, where = settings.ib_host, int(settings.ib_port or DEFAULT_IB_PORT), "IB_HOST/IB_PORT"
    else:
        endpoints = settings.data_dir / "endpoints.json"
        try:
            data = json.loads(endpoints.read_text())
            host, port, where = str(data["ib_host"]), int(data["ib_port"]), str(endpoints)
        except (OSError, KeyError, ValueError, TypeError):
            host, port, where = "127.0.0.1", DEFAULT_IB_PORT, "default"
    env = settings_env(env_file)
    process_env = {k.lower(): v for k, v in os.environ.items()}
    if client_id is not None:
        cid, cid_from = client_id, "--client-id"
    elif (env.get("tools_client_id") or "").strip():
        cid, cid_from = env["tools_client_id"].strip(), "TOOLS_CLIENT_ID"
    elif (process_env.get("ibkr_client_id") or process_env.get("ib_client_id") or "").strip():
        name = "ibkr_client_id" if (process_env.get("ibkr_client_id") or "").strip() else "ib_client_id"
        cid, cid_from = process_env[name].strip(), name.upper()
    else:
        cid, cid_from = TOOLS_CLIENT_ID_DEFAULT, "the tools' default"
    try:
        cid = int(cid)
        if cid < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{cid_from}={cid!r} is not a client id (an integer >= 0)",
                          code="INVALID_SETTINGS") from None
    return {"host": host, "port": port, "endpoint_from": where, "client_id": cid,
            "client_id_from": cid_from}
