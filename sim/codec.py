"""TWS messages: decode what the clients send, encode what TWS sends, at a negotiated version.

Incoming layouts follow the clients' own request code (`ib_async/client.py`, `ib_insync/client.py`:
`placeOrder`, `reqMktData`, `reqContractDetails`, ...). Outgoing layouts follow the clients'
decoders (`decoder.py` of both libraries) and the real TWS captures in /work/shared/reference:
the same fields, in the same order, with the same default values a real TWS puts in the
fields we do not model. Version gates used here (server version `v`):

    v >= 164  contractDetails without version field, with minSize/sizeIncrement/suggested
    v >= 166  error carries advancedOrderRejectJson
    v >= 159/160/162/170  openOrder duration / postToAts / autoCancelParent / peg offsets
    v >= 177  openOrder and completedOrder drop faProfile; placeOrder stops sending it
    v >= 178  execDetails carries pendingPriceRevision

Every encoder returns the list of fields (strings); sim.wire.pack() frames them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from bracketgate.sim.model import UNSET_DOUBLE, SimContract, SimExecution, SimOrder, SimPosition, WhatIfResult
from bracketgate.sim.trail_wire import (
    NO_TRAIL,
    TrailFields,
    read_trail_fields,
    trail_adjusted_fields,
    trail_completed_fields,
    trail_open_fields,
)
from bracketgate.sim.wire import (
    UNSET_DOUBLE_STR,
    UNSET_INTEGER_STR,
    UNSET_LONG_STR,
    FieldReader,
    WireError,
    f_bool,
    f_decimal,
    f_double,
    f_double_or_empty,
    f_multiplier,
    f_price_field,
    f_strike,
    java_double,
)

Fields = list[str]

# ======================================================================== incoming


@dataclass(frozen=True)
class ContractSpec:
    """A contract as a client describes it (the 12 fields every request carries)."""

    con_id: int = 0
    symbol: str = ""
    sec_type: str = ""
    last_trade: str = ""          # lastTradeDateOrContractMonth: YYYYMM or YYYYMMDD or ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    exchange: str = ""
    primary_exchange: str = ""
    currency: str = ""
    local_symbol: str = ""
    trading_class: str = ""

    def describe(self) -> str:
        parts = [self.sec_type or "?", self.symbol or f"conId={self.con_id}"]
        for p in (self.last_trade, f_strike(self.strike) if self.strike else "", self.right,
                  self.exchange, self.currency):
            if p:
                parts.append(p)
        return " ".join(parts)


def _read_contract(r: FieldReader) -> ContractSpec:
    return ContractSpec(
        con_id=r.int(), symbol=r.str(), sec_type=r.str(), last_trade=r.str(),
        strike=r.float(), right=r.str(), multiplier=r.str(), exchange=r.str(),
        primary_exchange=r.str(), currency=r.str(), local_symbol=r.str(), trading_class=r.str(),
    )


@dataclass(frozen=True)
class StartApi:
    client_id: int
    optional_capabilities: str = ""


@dataclass(frozen=True)
class PlaceOrder:
    """placeOrder, reduced to what the paper TWS models; the rest is read and dropped."""

    order_id: int
    contract: ContractSpec
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    oca_group: str
    account: str
    order_ref: str
    transmit: bool
    parent_id: int
    outside_rth: bool
    oca_type: int
    what_if: bool
    n_conditions: int = 0
    trail: TrailFields = NO_TRAIL       # trailing-stop fields, sim/trail_wire.py


@dataclass(frozen=True)
class CancelOrder:
    order_id: int


@dataclass(frozen=True)
class ReqMktData:
    req_id: int
    contract: ContractSpec
    generic_ticks: str
    snapshot: bool
    regulatory_snapshot: bool


@dataclass(frozen=True)
class ReqId:
    """A request that carries only a request id (cancels, ends, simple queries)."""

    msg_id: int
    req_id: int


@dataclass(frozen=True)
class Simple:
    """A request with no arguments we use (reqOpenOrders, reqPositions, reqGlobalCancel...)."""

    msg_id: int


@dataclass(frozen=True)
class ReqAccountUpdates:
    subscribe: bool
    account: str


@dataclass(frozen=True)
class ExecFilter:
    client_id: int = 0
    account: str = ""
    time: str = ""
    symbol: str = ""
    sec_type: str = ""
    exchange: str = ""
    side: str = ""


@dataclass(frozen=True)
class ReqExecutions:
    req_id: int
    filter: ExecFilter


@dataclass(frozen=True)
class ReqContractDetails:
    req_id: int
    contract: ContractSpec
    include_expired: bool
    sec_id_type: str
    sec_id: str


@dataclass(frozen=True)
class ReqAccountSummary:
    req_id: int
    group: str
    tags: str


@dataclass(frozen=True)
class ReqMulti:
    """reqPositionsMulti (74) / reqAccountUpdatesMulti (76)."""

    msg_id: int
    req_id: int
    account: str
    model_code: str
    ledger_and_nlv: bool = False


@dataclass(frozen=True)
class ReqSecDefOptParams:
    req_id: int
    underlying_symbol: str
    fut_fop_exchange: str
    underlying_sec_type: str
    underlying_con_id: int


@dataclass(frozen=True)
class ReqPnL:
    req_id: int
    account: str
    model_code: str
    con_id: int = 0          # reqPnLSingle only


@dataclass(frozen=True)
class ReqFlag:
    """A request with one int/bool argument: reqAutoOpenOrders, reqMarketDataType, reqIds..."""

    msg_id: int
    value: int


@dataclass(frozen=True)
class Unsupported:
    """A message this paper TWS does not implement; `req_id` when the layout has one."""

    msg_id: int
    req_id: int | None
    fields: tuple[str, ...] = field(default=())


ClientMessage = (
    StartApi | PlaceOrder | CancelOrder | ReqMktData | ReqId | Simple | ReqAccountUpdates
    | ReqExecutions | ReqContractDetails | ReqAccountSummary | ReqMulti | ReqSecDefOptParams
    | ReqPnL | ReqFlag | Unsupported
)

# client message ids (EClient outgoing)
REQ_MKT_DATA, CANCEL_MKT_DATA, PLACE_ORDER, CANCEL_ORDER, REQ_OPEN_ORDERS = 1, 2, 3, 4, 5
REQ_ACCT_DATA, REQ_EXECUTIONS, REQ_IDS, REQ_CONTRACT_DATA = 6, 7, 8, 9
REQ_AUTO_OPEN_ORDERS, REQ_ALL_OPEN_ORDERS, REQ_MANAGED_ACCTS = 15, 16, 17
REQ_CURRENT_TIME, REQ_GLOBAL_CANCEL, REQ_MARKET_DATA_TYPE = 49, 58, 59
REQ_POSITIONS, REQ_ACCOUNT_SUMMARY, CANCEL_ACCOUNT_SUMMARY, CANCEL_POSITIONS = 61, 62, 63, 64
START_API = 71
REQ_POSITIONS_MULTI, CANCEL_POSITIONS_MULTI = 74, 75
REQ_ACCOUNT_UPDATES_MULTI, CANCEL_ACCOUNT_UPDATES_MULTI = 76, 77
REQ_SEC_DEF_OPT_PARAMS, REQ_MARKET_RULE = 78, 91
REQ_PNL, CANCEL_PNL, REQ_PNL_SINGLE, CANCEL_PNL_SINGLE = 92, 93, 94, 95
REQ_COMPLETED_ORDERS = 99

# where the reqId sits (index after the message id) for requests we do not implement, so
# they can be answered with an error instead of leaving the client waiting for its timeout
_UNSUPPORTED_REQID_POS = {
    10: 1, 20: 0, 21: 1, 22: 0, 50: 1, 52: 1, 54: 1, 55: 1, 79: 0, 81: 0, 83: 0, 84: 0,
    86: 0, 87: 0, 88: 0, 96: 0, 97: 0, 100: 0, 102: 0, 104: 0,
}


def decode_client(fields: Sequence[str], version: int) -> ClientMessage:
    """Decode one client frame (already split into fields) at the negotiated `version`."""
    if not fields:
        raise WireError("empty message")
    try:
        msg_id = int(fields[0])
    except ValueError as e:
        raise WireError(f"bad message id {fields[0]!r}") from e
    r = FieldReader(fields[1:])
    if msg_id == START_API:
        r.skip()  # version 2
        return StartApi(client_id=r.int(), optional_capabilities=r.opt_str())
    if msg_id == PLACE_ORDER:
        return _decode_place_order(r, version)
    if msg_id == CANCEL_ORDER:
        r.skip()
        return CancelOrder(order_id=r.int())
    if msg_id == REQ_MKT_DATA:
        r.skip()  # version 11
        req_id = r.int()
        spec = _read_contract(r)
        if spec.sec_type == "BAG":
            n = r.int()
            r.skip(4 * n)
        if r.bool():  # delta-neutral contract
            r.skip(3)
        generic = r.str()
        snapshot = r.bool()
        regulatory = r.bool()
        return ReqMktData(req_id, spec, generic, snapshot, regulatory)
    if msg_id in (CANCEL_MKT_DATA, CANCEL_ACCOUNT_SUMMARY, CANCEL_POSITIONS_MULTI,
                  CANCEL_ACCOUNT_UPDATES_MULTI):
        r.skip()
        return ReqId(msg_id, r.int())
    if msg_id in (CANCEL_PNL, CANCEL_PNL_SINGLE, REQ_MARKET_RULE):
        return ReqId(msg_id, r.int())
    if msg_id in (REQ_OPEN_ORDERS, REQ_ALL_OPEN_ORDERS, REQ_MANAGED_ACCTS, REQ_CURRENT_TIME,
                  REQ_GLOBAL_CANCEL, REQ_POSITIONS, CANCEL_POSITIONS):
        return Simple(msg_id)
    if msg_id == REQ_COMPLETED_ORDERS:
        return ReqFlag(msg_id, int(r.bool()))
    if msg_id in (REQ_AUTO_OPEN_ORDERS, REQ_MARKET_DATA_TYPE, REQ_IDS):
        r.skip()
        return ReqFlag(msg_id, r.int())
    if msg_id == REQ_ACCT_DATA:
        r.skip()
        return ReqAccountUpdates(subscribe=r.bool(), account=r.str())
    if msg_id == REQ_EXECUTIONS:
        r.skip()
        req_id = r.int()
        flt = ExecFilter(client_id=r.int(), account=r.str(), time=r.str(), symbol=r.str(),
                         sec_type=r.str(), exchange=r.str(), side=r.str())
        return ReqExecutions(req_id, flt)
    if msg_id == REQ_CONTRACT_DATA:
        r.skip()  # version 8
        req_id = r.int()
        spec = _read_contract(r)
        return ReqContractDetails(req_id, spec, include_expired=r.bool(), sec_id_type=r.str(),
                                  sec_id=r.str())
    if msg_id == REQ_ACCOUNT_SUMMARY:
        r.skip()
        return ReqAccountSummary(req_id=r.int(), group=r.str(), tags=r.str())
    if msg_id in (REQ_POSITIONS_MULTI, REQ_ACCOUNT_UPDATES_MULTI):
        r.skip()
        req_id, account, model = r.int(), r.str(), r.str()
        ledger = r.bool() if (msg_id == REQ_ACCOUNT_UPDATES_MULTI and r.remaining) else False
        return ReqMulti(msg_id, req_id, account, model, ledger)
    if msg_id == REQ_SEC_DEF_OPT_PARAMS:
        return ReqSecDefOptParams(req_id=r.int(), underlying_symbol=r.str(),
                                  fut_fop_exchange=r.str(), underlying_sec_type=r.str(),
                                  underlying_con_id=r.int())
    if msg_id == REQ_PNL:
        return ReqPnL(req_id=r.int(), account=r.str(), model_code=r.str())
    if msg_id == REQ_PNL_SINGLE:
        return ReqPnL(req_id=r.int(), account=r.str(), model_code=r.str(), con_id=r.int())
    pos = _UNSUPPORTED_REQID_POS.get(msg_id)
    req_id: int | None = None
    if pos is not None and len(fields) > pos + 1:
        try:
            req_id = int(fields[pos + 1])
        except ValueError:
            req_id = None
    return Unsupported(msg_id, req_id, tuple(fields))


def _decode_place_order(r: FieldReader, version: int) -> PlaceOrder:
    """placeOrder exactly as `Client.placeOrder` writes it, up to the fields we need."""
    order_id = r.int()
    spec = _read_contract(r)
    r.skip(2)  # secIdType, secId
    action = r.str()
    total_quantity = r.float()
    order_type = r.str()
    lmt_price = r.opt_float()
    aux_price = r.opt_float()
    tif = r.str()
    oca_group = r.str()
    account = r.str()
    r.skip(2)  # openClose, origin
    order_ref = r.str()
    transmit = r.bool()
    parent_id = r.int()
    r.skip(4)  # blockOrder, sweepToFill, displaySize, triggerMethod
    outside_rth = r.bool()
    r.skip()  # hidden
    if spec.sec_type == "BAG":
        n = r.int()
        r.skip(8 * n)
        n = r.int()
        r.skip(n)
        n = r.int()
        r.skip(2 * n)
    # sharesAllocation discretionaryAmt goodAfterTime goodTillDate faGroup faMethod faPercentage
    r.skip(7)
    if version < 177:
        r.skip()  # faProfile
    r.skip(4)  # modelCode, shortSaleSlot, designatedLocation, exemptCode
    oca_type = r.int()
    # rule80A settlingFirm allOrNone minQty percentOffset eTradeOnly firmQuoteOnly nbboPriceCap
    # auctionStrategy startingPrice stockRefPrice delta stockRangeLower stockRangeUpper
    # overridePercentageConstraints volatility volatilityType
    r.skip(17)
    dn_order_type = r.str()
    r.skip()  # deltaNeutralAuxPrice
    if dn_order_type:
        r.skip(8)
    r.skip(2)  # continuousUpdate referencePriceType
    trail_stop_price, trailing_percent = r.opt_float(), r.opt_float()
    r.skip(2)  # scaleInitLevelSize scaleSubsLevelSize
    increment = r.opt_float()
    if increment is not None and 0 < increment < UNSET_DOUBLE:
        r.skip(7)
    r.skip(3)  # scaleTable activeStartTime activeStopTime
    hedge_type = r.str()
    if hedge_type:
        r.skip()
    r.skip(4)  # optOutSmartRouting clearingAccount clearingIntent notHeld
    if r.bool():  # delta-neutral contract
        r.skip(3)
    algo = r.str()
    if algo:
        n = r.int()
        r.skip(2 * n)
    r.skip()  # algoId
    what_if = r.bool()
    r.skip(4)  # orderMiscOptions solicited randomizeSize randomizePrice
    if order_type in ("PEG BENCH", "PEGBENCH"):
        r.skip(5)
    n_conditions = r.int() if r.remaining else 0
    trail = read_trail_fields(r, n_conditions, trail_stop_price, trailing_percent)
    return PlaceOrder(
        order_id=order_id, contract=spec, action=action, total_quantity=total_quantity,
        order_type=order_type, lmt_price=lmt_price, aux_price=aux_price, tif=tif or "DAY",
        oca_group=oca_group, account=account, order_ref=order_ref, transmit=transmit,
        parent_id=parent_id, outside_rth=outside_rth, oca_type=oca_type, what_if=what_if,
        n_conditions=n_conditions, trail=trail,
    )


# ======================================================================== outgoing

# server message ids (EDecoder incoming)
TICK_PRICE, TICK_SIZE, ORDER_STATUS, ERR_MSG, OPEN_ORDER = 1, 2, 3, 4, 5
ACCT_VALUE, PORTFOLIO_VALUE, ACCT_UPDATE_TIME, NEXT_VALID_ID, CONTRACT_DATA = 6, 7, 8, 9, 10
EXECUTION_DATA, MANAGED_ACCTS, CURRENT_TIME, CONTRACT_DATA_END = 11, 15, 49, 52
OPEN_ORDER_END, ACCT_DOWNLOAD_END, EXECUTION_DATA_END, TICK_SNAPSHOT_END = 53, 54, 55, 57
MARKET_DATA_TYPE, COMMISSION_REPORT, POSITION_DATA, POSITION_END = 58, 59, 61, 62
ACCOUNT_SUMMARY, ACCOUNT_SUMMARY_END, POSITION_MULTI, POSITION_MULTI_END = 63, 64, 71, 72
ACCOUNT_UPDATE_MULTI, ACCOUNT_UPDATE_MULTI_END = 73, 74
SEC_DEF_OPT_PARAMS, SEC_DEF_OPT_PARAMS_END, MARKET_RULE = 75, 76, 93
PNL, PNL_SINGLE, COMPLETED_ORDER, COMPLETED_ORDERS_END = 94, 95, 101, 102

# tick types
BID_SIZE, BID, ASK, ASK_SIZE, LAST, LAST_SIZE = 0, 1, 2, 3, 4, 5
HIGH, LOW, VOLUME, CLOSE = 6, 7, 8, 9

ORDER_TYPES_STK = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AON,AVGCOST,BASKET,COND,CONDORDER,DAY,DEACT,"
    "DEACTDIS,DEACTEOD,GAT,GTC,GTD,GTT,HID,IOC,LIT,LMT,MIT,MKT,MTL,NONALGO,OCA,REL,"
    "SCALE,SCALERST,SNAPMID,SNAPMKT,SNAPREL,STP,STPLMT,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,WHATIF"
)
ORDER_TYPES_FUT = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AVGCOST,BASKET,COND,CONDORDER,DAY,DEACT,DEACTDIS,"
    "DEACTEOD,GAT,GTC,GTD,GTT,HID,IOC,LIT,LMT,MIT,MKT,MTL,NONALGO,OCA,SCALE,SCALERST,"
    "SNAPMID,SNAPMKT,SNAPREL,STP,STPLMT,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,WHATIF"
)
VALID_EXCHANGES_STK = (
    "SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,NASDAQ,DRCTEDGE,BEX,BATS,EDGEA,BYX,IEX,EDGX")
VALID_EXCHANGES_OPT = (
    "SMART,AMEX,CBOE,PHLX,PSE,ISE,BOX,BATS,NASDAQOM,CBOE2,NASDAQBX,MIAX,GEMINI,EDGX")
SHAREHOLDER = "Not an insider or substantial shareholder"

# market rule ids as TWS numbers them for the tick sizes of our universe
MARKET_RULES: dict[float, int] = {0.01: 26, 0.05: 32, 0.25: 67, 0.1: 110, 0.5: 239}


def market_rule_id(min_tick: float) -> int:
    for tick, rule in MARKET_RULES.items():
        if abs(tick - min_tick) < 1e-12:
            return rule
    return 1000 + int(round(min_tick * 10000))


def market_rule_tick(rule_id: int) -> float | None:
    for tick, rule in MARKET_RULES.items():
        if rule == rule_id:
            return tick
    if rule_id >= 1000:
        return (rule_id - 1000) / 10000
    return None


def _right(c: SimContract, unset: str) -> str:
    return c.right if c.right else unset


def _contract11(c: SimContract, exchange: str | None = None, strike: str | None = None,
                right_unset: str = "", exch_is_primary: bool = False) -> Fields:
    """conId symbol secType lastTrade strike right multiplier exchange currency localSymbol
    tradingClass."""
    if exch_is_primary:  # positions: a stock's listing exchange; TWS leaves a future's empty
        exch = c.primary_exchange if c.sec_type == "STK" else ""
    else:
        exch = c.exchange if exchange is None else exchange
    return [
        str(c.con_id), c.symbol, c.sec_type, c.expiry,
        strike if strike is not None else java_double(float(c.strike)),
        _right(c, right_unset), f_multiplier(c.multiplier), exch, c.currency,
        c.local_symbol or c.symbol, c.trading_class or c.symbol,
    ]


# ---- session start, errors, time


def managed_accounts(accounts: Iterable[str]) -> Fields:
    return [str(MANAGED_ACCTS), "1", ",".join(accounts)]


def next_valid_id(order_id: int) -> Fields:
    return [str(NEXT_VALID_ID), "1", str(order_id)]


def error(req_id: int, code: int, message: str, version: int, advanced_json: str = "") -> Fields:
    fields = [str(ERR_MSG), "2", str(req_id), str(code), message]
    if version >= 166:
        fields.append(advanced_json)
    return fields


FARM_STATUS: tuple[tuple[int, str], ...] = (
    (2104, "Market data farm connection is OK:usfarm.nj"),
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:euhmds"),
    (2106, "HMDS data farm connection is OK:fundfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefil"),
)


def farm_status(version: int) -> list[Fields]:
    return [error(-1, code, msg, version) for code, msg in FARM_STATUS]


def current_time(epoch: float) -> Fields:
    return [str(CURRENT_TIME), "1", str(int(epoch))]


def conn_time(now: datetime) -> str:
    """The handshake's connection time, `20231021 13:28:15 UTC`."""
    return now.astimezone(timezone.utc).strftime("%Y%m%d %H:%M:%S") + " UTC"


def ib_time(epoch: float) -> str:
    """Execution / completed time: `20260413 15:27:04 UTC` (both clients parse the zone)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y%m%d %H:%M:%S") + " UTC"


# ---- orders


def _what_if_state(w: WhatIfResult) -> Fields:
    return [
        java_double(w.init_margin_before), java_double(w.maint_margin_before),
        java_double(w.equity_with_loan_before), java_double(w.init_margin_change),
        java_double(w.maint_margin_change), java_double(w.equity_with_loan_change),
        java_double(w.init_margin_after), java_double(w.maint_margin_after),
        java_double(w.equity_with_loan_after),
        f_double_or_empty(w.commission), f_double_or_empty(w.commission),
        f_double_or_empty(w.commission), w.currency, w.warning,
    ]


def open_order(o: SimOrder, version: int, *, what_if: WhatIfResult | None = None,
               commission: float | None = None, commission_currency: str = "") -> Fields:
    """openOrder (5) exactly as TWS 176 lays it out (136 fields; 135 at >= 177).

    `what_if` turns it into the what-if reply (whatIf=1, margin fields numeric);
    `commission` is the order's commission so far (sent once the order has fills).
    """
    c = o.contract
    status = "PreSubmitted" if what_if is not None else o.status
    f: Fields = [str(OPEN_ORDER), str(o.order_id)]
    f += _contract11(c, strike=f_strike(c.strike), right_unset="?")
    f += [
        o.action, f_decimal(o.total_quantity), o.order_type,
        f_price_field(o.lmt_price), f_price_field(o.aux_price), o.tif, o.oca_group, o.account,
        "",                                  # openClose
        "0",                                 # origin (customer)
        o.order_ref, str(o.client_id), str(o.perm_id),
        f_bool(o.outside_rth), "0",          # outsideRth, hidden
        "0", "",                             # discretionaryAmt, goodAfterTime
        f"{o.perm_id}.0/{o.account}/100",    # sharesAllocation (deprecated, TWS fills it)
        "", "", "",                          # faGroup, faMethod, faPercentage
    ]
    if version < 177:
        f.append("")                         # faProfile
    f += [
        "", "", "", "", "",                  # modelCode goodTillDate rule80A percentOffset
                                             # settlingFirm
        "0", "", "-1",                       # shortSaleSlot designatedLocation exemptCode
        "0", "", "", "", "", "",             # auctionStrategy startingPrice stockRefPrice delta
                                             # stockRangeLower stockRangeUpper
        UNSET_INTEGER_STR,                   # displaySize
        "0", "0", "0", "",                   # blockOrder sweepToFill allOrNone minQty
        str(o.oca_type or 3),                # ocaType (TWS reports 3 when none was given)
        "0", "0", "",                        # eTradeOnly firmQuoteOnly nbboPriceCap
        str(o.parent_id), "0",               # parentId triggerMethod
        "", "0",                             # volatility volatilityType
        "None", "",                          # deltaNeutralOrderType deltaNeutralAuxPrice
        "0", "", "", "", "?", "0", "0", "",  # delta-neutral: conId settlingFirm clearingAcct
                                             # clearingIntent openClose shortSale slot location
        "0", "0",                            # continuousUpdate referencePriceType
        *trail_open_fields(o), "", "",       # trailStopPrice trailingPercent basisPoints
                                             # basisPointsType
        "",                                  # comboLegsDescrip
        "0", "0", "0",                       # comboLegs, orderComboLegs, smartComboRoutingParams
        UNSET_INTEGER_STR, UNSET_INTEGER_STR, "",  # scaleInitLevelSize scaleSubsLevelSize increment
        "",                                  # hedgeType
        "0", "", "IB", "0",                  # optOutSmartRouting clearingAccount clearingIntent
                                             # notHeld
        "0",                                 # deltaNeutralContract present
        "",                                  # algoStrategy
        "0",                                 # solicited
        f_bool(what_if is not None),         # whatIf
        status,
    ]
    if what_if is not None:
        f += _what_if_state(what_if)
    else:
        f += [UNSET_DOUBLE_STR] * 9
        f += [f_double_or_empty(commission), "", "", commission_currency if commission is not None
              else "", ""]                   # commission min max currency warningText
    f += [
        "0", "0",                            # randomizeSize randomizePrice
        "0",                                 # conditions
        "None",                              # adjustedOrderType
        # triggerPrice trailStopPrice lmtPriceOffset adjustedStopPrice adjustedStopLimitPrice
        # adjustedTrailingAmount
        *trail_adjusted_fields(o),
        "0",                                 # adjustableTrailingUnit
        "", "", "",                          # softDollarTier name val displayName
        "0",                                 # cashQty
        "1", "0", "0", "0",                  # dontUseAutoPriceForHedge isOmsContainer
                                             # discretionaryUpToLimitPrice usePriceMgmtAlgo
    ]
    if version >= 159:
        f.append("")                         # duration
    if version >= 160:
        f.append("")                         # postToAts
    if version >= 162:
        f.append("0")                        # autoCancelParent
    if version >= 170:
        f += ["", "", "", "", ""]            # minTradeQty minCompeteSize competeAgainstBestOffset
                                             # midOffsetAtWhole midOffsetAtHalf
    return f


def order_status(o: SimOrder) -> Fields:
    """orderStatus (3): orderId status filled remaining avgFillPrice permId parentId lastFillPrice
    clientId whyHeld mktCapPrice."""
    return [
        str(ORDER_STATUS), str(o.order_id), o.status, f_decimal(o.filled), f_decimal(o.remaining),
        _px(o.avg_fill_price), str(o.perm_id), str(o.parent_id), _px(o.last_fill_price),
        str(o.client_id), o.why_held, "0",
    ]


def rejected_status(order_id: int, client_id: int, status: str, quantity: float,
                    perm_id: int = 0, parent_id: int = 0) -> Fields:
    """orderStatus for an order TWS refused at placement (Inactive / Cancelled, nothing filled)."""
    return [str(ORDER_STATUS), str(order_id), status, "0", f_decimal(quantity), "0",
            str(perm_id), str(parent_id), "0", str(client_id), "", "0"]


def _px(v: float) -> str:
    """Prices in orderStatus / execDetails: `0` when nothing filled, else `201.94`."""
    return "0" if not v else java_double(float(v))


def open_order_end() -> Fields:
    return [str(OPEN_ORDER_END), "1"]


def completed_order(o: SimOrder, version: int, parent_perm_id: int | None = None) -> Fields:
    """completedOrder (101), the layout of `Decoder.completedOrder` (101 fields; 100 at >= 177)."""
    c = o.contract
    f: Fields = [str(COMPLETED_ORDER)]
    f += _contract11(c, strike=f_strike(c.strike), right_unset="?")
    f += [
        o.action, f_decimal(o.total_quantity), o.order_type,
        f_price_field(o.lmt_price), f_price_field(o.aux_price), o.tif, o.oca_group, o.account,
        "", "0", o.order_ref, str(o.perm_id),   # openClose origin orderRef permId
        f_bool(o.outside_rth), "0", "0", "",    # outsideRth hidden discretionaryAmt goodAfterTime
        "", "", "",                             # faGroup faMethod faPercentage
    ]
    if version < 177:
        f.append("")                            # faProfile
    f += [
        "", "", "", "", "",                     # modelCode goodTillDate rule80A percentOffset
                                                # settlingFirm
        "0", "", "-1",                          # shortSaleSlot designatedLocation exemptCode
        "", "", "", "", "",                     # startingPrice stockRefPrice delta rangeLo rangeHi
        UNSET_INTEGER_STR,                      # displaySize
        "0", "0", "",                           # sweepToFill allOrNone minQty
        str(o.oca_type or 3), "0",              # ocaType triggerMethod
        "", "0",                                # volatility volatilityType
        "None", "",                             # deltaNeutralOrderType deltaNeutralAuxPrice
        "0", "0", "0", "",                      # delta-neutral conId shortSale slot location
        "0", "0", *trail_open_fields(o),        # continuousUpdate referencePriceType trailStopPrice
                                                # trailingPercent
        "",                                     # comboLegsDescrip
        "0", "0", "0",                          # comboLegs orderComboLegs smartComboRoutingParams
        UNSET_INTEGER_STR, UNSET_INTEGER_STR, "",  # scaleInit scaleSubs increment
        "",                                     # hedgeType
        "", "IB", "0",                          # clearingAccount clearingIntent notHeld
        "0", "",                                # deltaNeutralContract present, algoStrategy
        "0",                                    # solicited
        o.status,
        "0", "0",                               # randomizeSize randomizePrice
        "0",                                    # conditions
        *trail_completed_fields(o),             # trailStopPrice lmtPriceOffset
        "0", "1", "0",                          # cashQty dontUseAutoPriceForHedge isOmsContainer
        "",                                     # autoCancelDate
        f_decimal(o.filled),                    # filledQuantity
        UNSET_INTEGER_STR,                      # refFuturesConId
        "0", SHAREHOLDER, "0", "0",             # autoCancelParent shareholder imbalanceOnly
                                                # routeMarketableToBbo
        str(parent_perm_id) if parent_perm_id else UNSET_LONG_STR,  # parentPermId
        ib_time(o.completed_at) if o.completed_at is not None else "",
        o.completed_status or o.status,
    ]
    if version >= 170:
        f += ["", "", "", "", ""]
    return f


def completed_orders_end() -> Fields:
    return [str(COMPLETED_ORDERS_END)]


# ---- executions


def exec_details(req_id: int, e: SimExecution, version: int) -> Fields:
    """execDetails (11): 31 fields at 176, 32 at >= 178 (pendingPriceRevision)."""
    c = e.contract
    f: Fields = [str(EXECUTION_DATA), str(req_id), str(e.order_id)]
    f += _contract11(c, exchange=e.exchange, right_unset="")
    f += [
        e.exec_id, ib_time(e.time), e.account, e.exchange, e.side, f_decimal(e.shares),
        java_double(e.price), str(e.perm_id), str(e.client_id), "0",  # liquidation
        f_decimal(e.cum_qty), java_double(e.avg_price), e.order_ref,
        "", "", "",                               # evRule evMultiplier modelCode
        str(e.liquidity),                         # lastLiquidity
    ]
    if version >= 178:
        f.append("0")                             # pendingPriceRevision
    return f


def exec_details_end(req_id: int) -> Fields:
    return [str(EXECUTION_DATA_END), "1", str(req_id)]


def commission_report(e: SimExecution) -> Fields:
    return [
        str(COMMISSION_REPORT), "1", e.exec_id, java_double(e.commission), e.contract.currency,
        f_double(e.realized_pnl), UNSET_DOUBLE_STR, "",
    ]


# ---- account, portfolio, positions, P&L


def account_value(tag: str, value: str, currency: str, account: str) -> Fields:
    return [str(ACCT_VALUE), "2", tag, value, currency, account]


def account_update_time(hh_mm: str) -> Fields:
    return [str(ACCT_UPDATE_TIME), "1", hh_mm]


def account_download_end(account: str) -> Fields:
    return [str(ACCT_DOWNLOAD_END), "1", account]


def account_update_multi(req_id: int, account: str, model: str, tag: str, value: str,
                         currency: str) -> Fields:
    return [str(ACCOUNT_UPDATE_MULTI), "1", str(req_id), account, model, tag, value, currency]


def account_update_multi_end(req_id: int) -> Fields:
    return [str(ACCOUNT_UPDATE_MULTI_END), "1", str(req_id)]


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> Fields:
    return [str(ACCOUNT_SUMMARY), "1", str(req_id), account, tag, value, currency]


def account_summary_end(req_id: int) -> Fields:
    return [str(ACCOUNT_SUMMARY_END), "1", str(req_id)]


def portfolio_value(p: SimPosition, market_price: float, market_value: float,
                    unrealized: float, realized: float, account: str) -> Fields:
    """portfolioValue (7), version 8: 20 fields; strike `0`, right `0` as TWS prints them."""
    c = p.contract
    return [
        str(PORTFOLIO_VALUE), "8", str(c.con_id), c.symbol, c.sec_type, c.expiry,
        f_strike(c.strike), c.right or "0", f_multiplier(c.multiplier), c.primary_exchange,
        c.currency, c.local_symbol or c.symbol, c.trading_class or c.symbol,
        f_decimal(p.quantity), java_double(market_price), java_double(market_value),
        java_double(p.avg_cost), java_double(unrealized), java_double(realized), account,
    ]


def position(account: str, p: SimPosition) -> Fields:
    """position (61), version 3: 16 fields; exchange = primary exchange (NASDAQ) as TWS does."""
    c = p.contract
    return [str(POSITION_DATA), "3", account] + _contract11(c, exch_is_primary=True) + [
        f_decimal(p.quantity), java_double(p.avg_cost)]


def position_end() -> Fields:
    return [str(POSITION_END), "1"]


def position_multi(req_id: int, account: str, p: SimPosition, model: str = "") -> Fields:
    c = p.contract
    return [str(POSITION_MULTI), "1", str(req_id), account] + _contract11(
        c, exch_is_primary=True) + [f_decimal(p.quantity), java_double(p.avg_cost), model]


def position_multi_end(req_id: int) -> Fields:
    return [str(POSITION_MULTI_END), "1", str(req_id)]


def pnl(req_id: int, daily: float | None, unrealized: float | None,
        realized: float | None) -> Fields:
    return [str(PNL), str(req_id), f_double(daily), f_double(unrealized), f_double(realized)]


def pnl_single(req_id: int, pos: float, daily: float | None, unrealized: float | None,
               realized: float | None, value: float | None) -> Fields:
    """pnlSingle (95): position must parse as an int (`100`, not `100.0`)."""
    return [str(PNL_SINGLE), str(req_id), str(int(round(pos))), f_double(daily),
            f_double(unrealized), f_double(realized), f_double(value)]


# ---- contracts


@dataclass(frozen=True)
class ContractExtras:
    """Contract-details fields the domain model does not carry; defaults by security type."""

    industry: str = ""
    category: str = ""
    subcategory: str = ""
    under_symbol: str = ""
    under_sec_type: str = ""
    time_zone: str = "US/Eastern"
    sec_ids: tuple[tuple[str, str], ...] = ()   # (("ISIN", "US0378331005"),) for stocks


def trading_hours(day: datetime, sec_type: str, days: int = 5) -> tuple[str, str]:
    """tradingHours / liquidHours strings for `days` days from `day`, weekends CLOSED."""
    trading, liquid = [], []
    for i in range(days):
        d = (day + timedelta(days=i)).strftime("%Y%m%d")
        nxt = (day + timedelta(days=i + 1)).strftime("%Y%m%d")
        if (day + timedelta(days=i)).weekday() >= 5:
            trading.append(f"{d}:CLOSED")
            liquid.append(f"{d}:CLOSED")
        elif sec_type == "FUT":
            trading.append(f"{d}:1700-{nxt}:1600")
            liquid.append(f"{d}:0830-{d}:1600")
        elif sec_type == "OPT":
            trading.append(f"{d}:0930-{d}:1600")
            liquid.append(f"{d}:0930-{d}:1600")
        else:
            trading.append(f"{d}:0400-{d}:2000")
            liquid.append(f"{d}:0930-{d}:1600")
    return ";".join(trading), ";".join(liquid)


def contract_details(req_id: int, c: SimContract, version: int, *, today: datetime,
                     extras: ContractExtras | None = None, under_symbol: str = "",
                     sec_type_override: str = "") -> Fields:
    """contractDetails (10) at >= 164 (no version field): 42 fields for a stock, 40 for a future."""
    x = extras or ContractExtras()
    sec_type = sec_type_override or c.sec_type
    if c.sec_type == "FUT":
        last_times = f"{c.expiry} 08:30 US/Central"
        tz = "US/Central"
    else:
        last_times = c.expiry
        tz = x.time_zone
    hours, liquid = trading_hours(today, c.sec_type)
    if c.sec_type == "STK":
        order_types, valid = ORDER_TYPES_STK, VALID_EXCHANGES_STK
        primary = c.primary_exchange
    elif c.sec_type == "OPT":
        order_types, valid = ORDER_TYPES_STK, VALID_EXCHANGES_OPT
        primary = ""
    else:
        order_types, valid = ORDER_TYPES_FUT, f"{c.exchange},QBALGO"
        primary = ""
    n_valid = len(valid.split(","))
    rule = str(market_rule_id(c.min_tick))
    f: Fields = [str(CONTRACT_DATA)]
    if version < 164:
        f.append("8")
    f += [
        str(req_id), c.symbol, sec_type, last_times, f_strike(c.strike), c.right, c.exchange,
        c.currency, c.local_symbol or c.symbol,
        c.trading_class or c.symbol,           # marketName
        c.trading_class or c.symbol, str(c.con_id), java_double(c.min_tick),
    ]
    if version < 164:
        f.append("1")                          # mdSizeMultiplier
    f += [
        f_multiplier(c.multiplier), order_types, valid, "1", str(c.under_con_id or 0),
        c.long_name or c.symbol, primary, c.contract_month,
        x.industry, x.category, x.subcategory, tz, hours, liquid,
        "", "",                                # evRule evMultiplier
        str(len(x.sec_ids)),                   # secIdList
    ]
    for tag, value in x.sec_ids:
        f += [tag, value]
    f += [
        {"STK": "1", "OPT": "2"}.get(c.sec_type, UNSET_INTEGER_STR),  # aggGroup
        under_symbol or x.under_symbol,
        x.under_sec_type, ",".join([rule] * n_valid),
        c.expiry if c.sec_type != "STK" else "",  # realExpirationDate
        "COMMON" if c.sec_type == "STK" else "",  # stockType
    ]
    if version == 163:
        f.append("100" if c.sec_type == "STK" else "1")
    if version >= 164:
        f += ["1", "1", "100" if c.sec_type == "STK" else "1"]  # minSize sizeIncrement suggested
    return f


def contract_details_end(req_id: int) -> Fields:
    return [str(CONTRACT_DATA_END), "1", str(req_id)]


def sec_def_opt_params(req_id: int, exchange: str, under_con_id: int, trading_class: str,
                       multiplier: float, expirations: Sequence[str],
                       strikes: Sequence[float]) -> Fields:
    return ([str(SEC_DEF_OPT_PARAMS), str(req_id), exchange, str(under_con_id), trading_class,
             f_multiplier(multiplier) or "1", str(len(expirations))] + list(expirations)
            + [str(len(strikes))] + [java_double(float(s)) for s in strikes])


def sec_def_opt_params_end(req_id: int) -> Fields:
    return [str(SEC_DEF_OPT_PARAMS_END), str(req_id)]


def market_rule(rule_id: int, increment: float) -> Fields:
    return [str(MARKET_RULE), str(rule_id), "1", "0", java_double(increment)]


# ---- market data


def tick_price(req_id: int, tick_type: int, price: float, size: float | None,
               attr_mask: int = 0) -> Fields:
    return [str(TICK_PRICE), "6", str(req_id), str(tick_type), java_double(price),
            f_decimal(size) if size is not None else "0", str(attr_mask)]


def tick_size(req_id: int, tick_type: int, size: float) -> Fields:
    return [str(TICK_SIZE), "6", str(req_id), str(tick_type), f_decimal(size)]


def tick_snapshot_end(req_id: int) -> Fields:
    return [str(TICK_SNAPSHOT_END), "1", str(req_id)]


def market_data_type(req_id: int, data_type: int = 1) -> Fields:
    return [str(MARKET_DATA_TYPE), "1", str(req_id), str(data_type)]


# ---- lists a client waits for; the paper TWS has nothing (or little) to put in them


def symbol_samples(req_id: int, contracts: Sequence[SimContract], version: int) -> Fields:
    """symbolSamples (79): conId symbol secType primaryExchange currency nDerivative [types]
    (+ description issuerId at >= 176)."""
    f: Fields = ["79", str(req_id), str(len(contracts))]
    for c in contracts:
        derivs = ["OPT"] if c.sec_type == "STK" else []
        f += [str(c.con_id), c.symbol, c.sec_type, c.primary_exchange, c.currency,
              str(len(derivs)), *derivs]
        if version >= 176:
            f += [c.long_name, ""]
    return f


def soft_dollar_tiers(req_id: int) -> Fields:
    return ["77", str(req_id), "0"]


def family_codes() -> Fields:
    return ["78", "0"]


def mkt_depth_exchanges() -> Fields:
    return ["80", "0"]


def news_providers() -> Fields:
    return ["85", "0"]


def scanner_parameters() -> Fields:
    return ["19", "1", "<ScanParameterResponse/>"]
