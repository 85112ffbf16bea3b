"""Locust load test of the shardcache client API (`POST /data`, `GET`/`DELETE /data/{key}`).

Two kinds of simulated clients hammer a master (or nginx in front of several):

- ``ReadHeavyUser``  (weight 3): ~90% GET, 8% POST, 2% DELETE
- ``WriteHeavyUser`` (weight 1): ~50% POST (a third of them with a short ``ttl``),
  40% GET, 10% DELETE

Keys come from a fixed key space ``lt:0`` .. ``lt:{KEYS-1}`` and are drawn from a
Zipf(s) distribution, so a handful of keys are hot and most are cold.

Every value is **self-verifying**: ``sc1:<sha256-hex of key + ":" + payload>:<payload>``.
A GET that returns 200 recomputes the digest and fails the request if the value is
malformed, was written for another key, or was corrupted/torn on the way through the
erasure-coded cluster. Misses (404) are successes, reported on their own
``... (miss)`` stats rows so the hit ratio is visible; 5xx and any other unexpected
status are failures. Values need no shared state between users, so the check holds
with any number of users, processes or masters, and across runs.

Settings (command-line option, else environment variable, else default):

  --shardcache-keys         SHARDCACHE_KEYS          2000             key space size
  --shardcache-value-sizes  SHARDCACHE_VALUE_SIZES   100,1000,10000   payload bytes, picked uniformly
  --shardcache-ttl          SHARDCACHE_TTL           30               seconds, for the TTL writes
  --shardcache-zipf-s       SHARDCACHE_ZIPF_S        1.1              Zipf exponent (higher = hotter)

Run headless with ``loadtest/run.sh HOST``; see ``loadtest/README.md``.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import hashlib
import os
import random
from dataclasses import dataclass
from urllib.parse import quote

from locust import FastHttpUser, between, events, task

# Stats row names: one row per operation (and per miss), never one per key.
NAME_SET = "/data"
NAME_SET_TTL = "/data (ttl)"
NAME_KEY = "/data/[key]"
NAME_MISS = "/data/[key] (miss)"

KEY_PREFIX = "lt:"
VALUE_MAGIC = "sc1"
DIGEST_HEX_LEN = 64  # sha256


# ---------------------------------------------------------------------------
# Settings: parsed (and validated) the same way from the command line and the env.
# ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _size_list(text: str) -> tuple[int, ...]:
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("needs at least one size, e.g. 100,1000,10000")
    return tuple(_positive_int(part) for part in parts)


def _positive_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


# (option dest, environment variable, default, parser, help)
SETTINGS = (
    ("shardcache_keys", "SHARDCACHE_KEYS", "2000", _positive_int, "Number of keys in the key space"),
    ("shardcache_value_sizes", "SHARDCACHE_VALUE_SIZES", "100,1000,10000", _size_list,
     "Comma-separated payload sizes in bytes, picked uniformly per write"),
    ("shardcache_ttl", "SHARDCACHE_TTL", "30", _positive_int, "ttl in seconds of the TTL writes"),
    ("shardcache_zipf_s", "SHARDCACHE_ZIPF_S", "1.1", _positive_float,
     "Zipf exponent of the key popularity (higher = fewer, hotter keys)"),
)


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kwargs):
    for dest, env_var, default, parse, help_text in SETTINGS:
        parser.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            type=parse,
            env_var=env_var,
            default=parse(default),
            help=f"{help_text} (default {default})",
        )


@dataclass(frozen=True)
class Settings:
    keys: int
    value_sizes: tuple[int, ...]
    ttl: int
    zipf_s: float

    @classmethod
    def from_environment(cls, environment) -> "Settings":
        """Locust's parsed options; the env vars if the file runs without Locust's parser."""
        options = getattr(environment, "parsed_options", None)
        values = []
        for dest, env_var, default, parse, _help in SETTINGS:
            raw = getattr(options, dest, None)
            if raw is None:
                raw = os.environ.get(env_var, default)
            # Re-parse whatever arrived: the web UI sends strings, and options forwarded
            # from a master to its workers turn tuples into lists.
            if isinstance(raw, (list, tuple)):
                raw = ",".join(map(str, raw))
            values.append(parse(str(raw)))
        return cls(*values)


# ---------------------------------------------------------------------------
# Workload: Zipf key picking and self-verifying values.
# ---------------------------------------------------------------------------


class Workload:
    def __init__(self, settings: Settings):
        self.settings = settings
        # CDF of Zipf(s) over ranks 1..KEYS; rank r is key lt:{r-1}.
        weights = [1.0 / rank**settings.zipf_s for rank in range(1, settings.keys + 1)]
        total = sum(weights)
        cdf, running = [], 0.0
        for weight in weights:
            running += weight
            cdf.append(running / total)
        cdf[-1] = 1.0  # no float drift past the last key
        self.cdf = cdf

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def for_settings(settings: Settings) -> "Workload":
        """One workload per process and configuration (the CDF is built once)."""
        return Workload(settings)

    def pick_key(self) -> str:
        return f"{KEY_PREFIX}{bisect.bisect_left(self.cdf, random.random())}"

    def make_value(self, key: str) -> str:
        size = random.choice(self.settings.value_sizes)
        payload = random.randbytes((size + 1) // 2).hex()[:size]  # random ASCII, exact size
        return f"{VALUE_MAGIC}:{digest(key, payload)}:{payload}"


def digest(key: str, payload: str) -> str:
    return hashlib.sha256(f"{key}:{payload}".encode()).hexdigest()


def check_value(key: str, value) -> str | None:
    """Why `value` is not a valid value for `key`, or None when it is."""
    if not isinstance(value, str):
        return "value is not a string"
    parts = value.split(":", 2)
    if len(parts) != 3 or parts[0] != VALUE_MAGIC or len(parts[1]) != DIGEST_HEX_LEN:
        return "malformed value (not sc1:<sha256>:<payload>)"
    if digest(key, parts[2]) != parts[1]:
        return "digest mismatch (value corrupted or written for another key)"
    return None


def json_body(response):
    """The response's JSON object, or None if it has none."""
    try:
        body = response.json()
    except Exception:
        return None
    return body if isinstance(body, dict) else None


def unexpected(response, key: str | None = None) -> str:
    """Failure message for an unexpected answer, kept coarse so that Locust's error
    report groups failures by cause: the key is masked and only the first clause of a
    shardcache error is kept ("write quorum not reached", not which nodes timed out;
    the master's log has the rest)."""
    if not response.status_code:
        detail = repr(getattr(response, "error", None) or "no response")
    else:
        body = json_body(response)
        if body is not None and "error" in body:
            detail = str(body["error"]).split(": ", 1)[0]
        else:  # not shardcache answering (a proxy's error page, ...)
            detail = " ".join((response.text or "").split())
    detail = detail[:120]
    if key:
        detail = detail.replace(key, "[key]")
    return f"HTTP {response.status_code}: {detail}"


def is_json_miss(response) -> bool:
    """A genuine 404 from shardcache carries a JSON error body; a 404 page from a
    misconfigured proxy does not, and must not count as a cache miss."""
    body = json_body(response)
    return response.status_code == 404 and body is not None and "error" in body


# ---------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------


class ShardcacheUser(FastHttpUser):
    """The three operations, each with its own checks; subclasses set the mix."""

    abstract = True
    wait_time = between(0.01, 0.1)

    def on_start(self):
        self.workload = Workload.for_settings(Settings.from_environment(self.environment))

    def get_key(self):
        key = self.workload.pick_key()
        with self.client.get(f"/data/{quote(key, safe='')}", name=NAME_KEY, catch_response=True) as resp:
            if resp.status_code == 200:
                body = json_body(resp)
                if body is None:
                    resp.failure("GET 200 without a JSON object body")
                elif body.get("key") != key:
                    resp.failure("GET returned another key")
                elif (problem := check_value(key, body.get("value"))) is not None:
                    resp.failure(problem)
                else:
                    resp.success()
            elif is_json_miss(resp):
                resp.request_meta["name"] = NAME_MISS  # separate row: hit ratio at a glance
                resp.success()
            else:
                resp.failure(unexpected(resp, key))

    def set_key(self, with_ttl: bool = False):
        key = self.workload.pick_key()
        body = {"key": key, "value": self.workload.make_value(key)}
        if with_ttl:
            body["ttl"] = self.workload.settings.ttl
        name = NAME_SET_TTL if with_ttl else NAME_SET
        with self.client.post("/data", json=body, name=name, catch_response=True) as resp:
            answer = json_body(resp) if resp.status_code == 200 else None
            if resp.status_code != 200:
                resp.failure(unexpected(resp, key))
            elif answer is None or answer.get("key") != key or not answer.get("version"):
                resp.failure("POST 200 without the written key and a version")
            else:
                resp.success()

    def delete_key(self):
        key = self.workload.pick_key()
        with self.client.delete(f"/data/{quote(key, safe='')}", name=NAME_KEY, catch_response=True) as resp:
            if resp.status_code == 200:
                answer = json_body(resp)
                if answer is None or answer.get("key") != key or answer.get("deleted") is not True:
                    resp.failure('DELETE 200 without {"key", "deleted": true}')
                else:
                    resp.success()
            elif is_json_miss(resp):  # already absent: fine
                resp.request_meta["name"] = NAME_MISS
                resp.success()
            else:
                resp.failure(unexpected(resp, key))


class ReadHeavyUser(ShardcacheUser):
    """A cache reader: ~90% GET, 8% POST, 2% DELETE."""

    weight = 3

    @task(90)
    def read(self):
        self.get_key()

    @task(8)
    def write(self):
        self.set_key()

    @task(2)
    def delete(self):
        self.delete_key()


class WriteHeavyUser(ShardcacheUser):
    """A cache filler: ~50% POST (15 of the 50 points with a ttl), 40% GET, 10% DELETE."""

    weight = 1

    @task(35)
    def write(self):
        self.set_key()

    @task(15)
    def write_with_ttl(self):
        self.set_key(with_ttl=True)

    @task(40)
    def read(self):
        self.get_key()

    @task(10)
    def delete(self):
        self.delete_key()
