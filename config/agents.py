"""The agents file: which agents may trade, each one's limits and HMAC key (issue 10).

One frozen model loaded from TOML (`load_agents(path)`, named by the AGENTS_FILE setting and
re-read on SIGHUP with the limits file); unknown keys are errors, and a bad file never yields
half a registry. Shape:

    [operator]                       # optional: the key that signs control commands
    key_env = "BRACKETGATE_OPERATOR_KEY"

    [agents.momentum-1]              # one table per agent_id (the MQTT topic's last level)
    enabled = true                   # false: its proposals are refused AGENT_DISABLED
    key_file = "keys/momentum-1.key" # exactly one of key / key_file / key_env, or none
    max_open_brackets = 5            # any AgentLimits field (config/limits.py) as an override

With an agents file, a proposal from an agent_id not in it is refused UNKNOWN_AGENT and one
from a disabled agent AGENT_DISABLED, before any other check; nothing is placed.

Limits precedence for a registered agent (lowest first): the limits file's `[agent]`, then its
`[agents.<id>]`, then this file's `[agents.<id>]`.

Keys: `key` inline, `key_file` (read once at load; a relative path is relative to the agents
file; surrounding whitespace stripped) or `key_env` (an environment variable's value). The key
is the UTF-8 bytes of that text, at least 16 bytes. Keys are held as secrets: never in a repr,
a log line or `model_dump`. `key_for(agent_id)` and `operator_key` hand them to the message
authentication (bus/auth.py).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bracketgate.bus.errors import ConfigError
from bracketgate.config.limits import AgentLimits, AgentOverride

MIN_KEY_BYTES = 16
_AGENT_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class _KeySource(BaseModel):
    """Where a secret comes from: at most one of key / key_file / key_env."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr | None = None
    key_file: Path | None = None
    key_env: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _KeySource:
        given = [n for n in ("key", "key_file", "key_env") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of key, key_file, key_env (got {', '.join(given)})")
        return self

    def resolve(self, base: Path | None, what: str) -> bytes | None:
        """The key's bytes, or None when no source is given. Raises ValueError (never shows
        the secret itself)."""
        if self.key is not None:
            text, where = self.key.get_secret_value(), "key"
        elif self.key_file is not None:
            path = self.key_file if self.key_file.is_absolute() or base is None \
                else base / self.key_file
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{what}: cannot read key_file {path}: "
                                 f"{type(e).__name__}") from None
            where = f"key_file {path}"
        elif self.key_env is not None:
            env = os.environ.get(self.key_env)
            if env is None:
                raise ValueError(f"{what}: key_env {self.key_env} is not set")
            text, where = env, f"key_env {self.key_env}"
        else:
            return None
        raw = text.strip().encode("utf-8")
        if len(raw) < MIN_KEY_BYTES:
            raise ValueError(f"{what}: the key from {where} is shorter than {MIN_KEY_BYTES} bytes")
        return raw


class OperatorEntry(_KeySource):
    """`[operator]`: the key that signs control commands (halt / reduce / resume)."""


class AgentEntry(AgentOverride, _KeySource):
    """`[agents.<agent_id>]`: enabled or not, its key, and AgentLimits overrides."""

    enabled: bool = True


class AgentsFile(BaseModel):
    """The validated agents file. Build with `load_agents` / `parse_agents` (they resolve keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operator: OperatorEntry | None = None
    agents: dict[str, AgentEntry] = Field(default_factory=dict)

    _keys: dict[str, bytes] = PrivateAttr(default_factory=dict)
    _operator_key: bytes | None = PrivateAttr(default=None)

    @field_validator("agents")
    @classmethod
    def _agent_ids(cls, v: dict[str, AgentEntry]) -> dict[str, AgentEntry]:
        bad = [a for a in v if not a or len(a) > 64 or not a[0].isalnum() or not a.isascii()
               or not set(a) <= _AGENT_ID_CHARS]
        if bad:
            raise ValueError(f"not agent ids (letters, digits, '.', '_', '-'; 64 at most; "
                             f"first a letter or digit): {bad}")
        return v

    # ------------------------------------------------------------------ lookups

    def is_known(self, agent_id: str) -> bool:
        return agent_id in self.agents

    def is_enabled(self, agent_id: str) -> bool:
        entry = self.agents.get(agent_id)
        return entry is not None and entry.enabled

    def key_for(self, agent_id: str) -> bytes | None:
        """The agent's HMAC key (None: unknown agent, or no key configured for it)."""
        return self._keys.get(agent_id)

    @property
    def operator_key(self) -> bytes | None:
        """The operator's HMAC key for control commands (None: no [operator] key)."""
        return self._operator_key

    def limits_for(self, agent_id: str, base: AgentLimits) -> AgentLimits:
        """`base` (the limits file's resolution) with this file's overrides for the agent."""
        entry = self.agents.get(agent_id)
        if entry is None:
            return base
        over = entry.model_dump(include=set(AgentLimits.model_fields), exclude_none=True)
        return base.model_copy(update=over) if over else base

    def _resolve_keys(self, base: Path | None) -> None:
        self._keys = {}
        for agent_id, entry in self.agents.items():
            k = entry.resolve(base, f"agents.{agent_id}")
            if k is not None:
                self._keys[agent_id] = k
        self._operator_key = (self.operator.resolve(base, "operator")
                              if self.operator is not None else None)


def _problems(e: ValidationError) -> str:
    # never the input: a `key` may be in it
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                     for err in e.errors(include_input=False))


def parse_agents(data: dict[str, Any], *, source: str = "<dict>",
                 base: Path | None = None) -> AgentsFile:
    """Validate an agents mapping and resolve its keys. Raises ConfigError."""
    try:
        model = AgentsFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid agents file {source}: {_problems(e)}") from None
    try:
        model._resolve_keys(base)
    except ValueError as e:
        raise ConfigError(f"invalid agents file {source}: {e}") from None
    return model


def load_agents(path: str | Path) -> AgentsFile:
    """Read and validate an agents TOML file. Raises ConfigError (never returns half a file)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read agents file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"agents file {path} is not valid TOML: {e}") from e
    return parse_agents(data, source=str(path), base=path.parent)


def diff_agents(old: AgentsFile | None, new: AgentsFile | None) -> list[str]:
    """Human lines for what a reload changed (keys only as 'changed', never their values)."""
    def flat(a: AgentsFile | None) -> dict[str, Any]:
        if a is None:
            return {}
        out: dict[str, Any] = {}
        for agent_id, e in a.agents.items():
            for k, v in e.model_dump(exclude={"key", "key_file", "key_env"}).items():
                out[f"agents.{agent_id}.{k}"] = v
            out[f"agents.{agent_id}.key"] = _fingerprint(a.key_for(agent_id))
        out["operator.key"] = _fingerprint(a.operator_key)
        return out

    a, b = flat(old), flat(new)
    lines = []
    for k in sorted(a.keys() | b.keys()):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if va != vb:
            lines.append(f"{k}: changed" if k.endswith(".key") else f"{k}: {va!r} -> {vb!r}")
    return lines


def _fingerprint(key: bytes | None) -> str | None:
    if key is None:
        return None
    import hashlib

    return hashlib.sha256(key).hexdigest()[:12]
