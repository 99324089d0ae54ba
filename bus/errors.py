"""The project's error tree, in one place. Each error carries the code that caused it.

    BracketgateError(code=None)           every error raised by bracketgate code
    ├── ConfigError                       bad settings / limits file; raised at start, never later
    ├── LifecycleError(state, action)     an illegal lifecycle move (UNOPENED -> OPEN -> CLOSED)
    ├── BrokerError(code)                 IB side; code = IB errorCode (int) when IB gave one
    │   ├── BrokerConnectError            could not connect / handshake (timeout, refused, 502)
    │   ├── BrokerNotConnected            a request while the IB connection is down
    │   ├── BrokerTimeout                 IB did not answer a request in time
    │   └── PlacementError                IB refused an order (code = errorCode, e.g. 201)
    ├── BusError                          the in-process bus (bus/bus.py)
    │   ├── BusOverloaded                 a REJECT-policy subscriber's queue is full
    │   ├── RequestTimeout                request/reply: no answer within the timeout
    │   ├── NoSuchService                 request/reply: nobody serves that name
    │   ├── ServiceAlreadyServed          serve(): a second handler for one service name
    │   └── DrainTimeout                  drain(): queues not empty within the timeout
    ├── MqttError(rc)                     MQTT side; rc = MQTT reason code when there is one
    │   └── MqttNotConnected              wait_connected() timed out / bridge not connected
    └── JournalError                      the SQLite journal could not read or write

Catch the narrowest class that you can handle; let the rest travel up to the supervisor.
"""

from __future__ import annotations

from typing import Any


class BracketgateError(Exception):
    """Base of every bracketgate error. `code` is the external code that caused it, if any."""

    def __init__(self, message: str = "", *, code: int | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.message} (code={self.code})"


class ConfigError(BracketgateError):
    """Invalid configuration: raised at start so a typo never becomes a runtime surprise."""


class LifecycleError(BracketgateError):
    """An illegal lifecycle move, e.g. start() on a CLOSED component."""

    def __init__(self, component: str, state: str, action: str) -> None:
        super().__init__(f"{component}: cannot {action} in state {state}")
        self.component = component
        self.state = state
        self.action = action


# --------------------------------------------------------------------------- broker (IB)


class BrokerError(BracketgateError):
    """Interactive Brokers side. `code` is IB's errorCode when IB reported one."""


class BrokerConnectError(BrokerError):
    pass


class BrokerNotConnected(BrokerError):
    pass


class BrokerTimeout(BrokerError):
    pass


class PlacementError(BrokerError):
    pass


# --------------------------------------------------------------------------- bus


class BusError(BracketgateError):
    """The in-process bus."""


class BusOverloaded(BusError):
    """A REJECT-policy subscriber's queue was full: the message was delivered to nobody."""

    def __init__(self, topic: str, subscription: str, maxsize: int) -> None:
        super().__init__(f"bus overloaded: {subscription} ({topic}) queue full at {maxsize}",
                         code="OVERLOADED")
        self.topic = topic
        self.subscription = subscription
        self.maxsize = maxsize


class RequestTimeout(BusError):
    def __init__(self, service: str, timeout: float) -> None:
        super().__init__(f"request to {service!r} timed out after {timeout}s", code="TIMEOUT")
        self.service = service
        self.timeout = timeout


class NoSuchService(BusError):
    def __init__(self, service: str) -> None:
        super().__init__(f"no handler serves {service!r}", code="NO_SUCH_SERVICE")
        self.service = service


class ServiceAlreadyServed(BusError):
    def __init__(self, service: str) -> None:
        super().__init__(f"service {service!r} already has a handler", code="DUPLICATE_SERVICE")
        self.service = service


class DrainTimeout(BusError):
    def __init__(self, timeout: float, pending: dict[str, Any]) -> None:
        super().__init__(f"bus not drained within {timeout}s: {pending}", code="DRAIN_TIMEOUT")
        self.timeout = timeout
        self.pending = pending


# --------------------------------------------------------------------------- mqtt


class MqttError(BracketgateError):
    """MQTT side. `code` (alias `rc`) is the MQTT reason code when the broker gave one."""

    def __init__(self, message: str = "", *, rc: int | None = None) -> None:
        super().__init__(message, code=rc)

    @property
    def rc(self) -> int | None:
        return self.code if isinstance(self.code, int) else None


class MqttNotConnected(MqttError):
    pass


# --------------------------------------------------------------------------- journal


class JournalError(BracketgateError):
    pass
