#!/usr/bin/env python3
"""Checks the shardcache Grafana dashboards without running Grafana.

1. Schema: every dashboard JSON is parsed with grafana-foundation-sdk (pinned to a
   Grafana 11 schema in requirements.txt) and serialised again; a field the schema
   does not know is lost on that round trip and reported (typos, wrong nesting).
   Panels need a title, a description, a Prometheus datasource (the provisioned uid)
   and a query expression; panel ids and dashboard uids/titles must be unique.
2. Queries (unless --schema-only): every panel query, with Grafana's variables
   substituted, runs as an instant query against a live Prometheus and must succeed
   and return at least one series. Every `shardcache_*` metric a query names must be
   known to Prometheus, so a typo or a metric the binaries do not export is reported
   as such instead of as an empty panel.

    python3 grafana/check_dashboards.py --prometheus http://127.0.0.1:9090 --wait 60
    python3 grafana/check_dashboards.py --schema-only

Exit status: 0 all good, 1 something failed, 2 bad usage or Prometheus unreachable.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDK_PACKAGE = "grafana-foundation-sdk"

# Panel types that carry no queries.
NO_QUERY_PANELS = {"text", "news", "dashlist", "annolist", "welcome"}
# Grafana's global variables (https://grafana.com/docs/grafana/latest/dashboards/variables/add-template-variables/#global-variables).
GLOBAL_VARIABLES = {
    "__rate_interval", "__rate_interval_ms", "__interval", "__interval_ms", "__range",
    "__range_s", "__range_ms", "__from", "__to", "__dashboard", "__org", "__user",
    "__name", "__timeFilter", "timeFilter", "__auto",
}
# `${name}`, `${name:format}`, `[[name]]`, `[[name:format]]`, `$name`.
# Names start with a letter or "_", so label_replace's "$1" is left alone (as Grafana does).
VARIABLE_RE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
METRIC_RE = re.compile(r"\b(shardcache_[A-Za-z0-9_:]*)")
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


# ----------------------------------------------------------------------------- model


@dataclass
class Query:
    ref: str
    expr: str
    kind: str = "target"  # target | variable | annotation


@dataclass
class Item:
    """Something the check prints one line for: a panel, a variable or an annotation."""

    dashboard: str
    label: str
    queries: list[Query]
    require_result: bool = True
    problems: list[str] = field(default_factory=list)
    series: int = 0
    nan: int = 0
    # False once a query is rejected as bad PromQL: waiting will not fix that.
    retryable: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Dashboard:
    path: Path
    data: dict


def parse_duration(text: str) -> float | None:
    text = text.strip()
    pos, total = 0, 0.0
    for m in DURATION_RE.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def fmt_duration(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds >= 1 else f"{int(seconds * 1000)}ms"


def walk_panels(panels):
    """Yields every panel, rows included, panels nested in collapsed rows too."""
    for panel in panels or []:
        if not isinstance(panel, dict):
            continue
        yield panel
        if panel.get("type") == "row":
            yield from walk_panels(panel.get("panels"))


def panel_label(panel: dict) -> str:
    return f"#{panel.get('id', '?')} {panel.get('title') or '(untitled ' + str(panel.get('type')) + ')'}"


# ----------------------------------------------------------------------------- schema


def load_sdk():
    try:
        from grafana_foundation_sdk.cog import plugins, runtime
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import dashboard as sdk_dashboard
        from grafana_foundation_sdk.models import prometheus as sdk_prometheus
    except ImportError as error:
        print(f"error: {SDK_PACKAGE} is not installed ({error}); run "
              f"`pip install -r {HERE / 'requirements.txt'}`", file=sys.stderr)
        sys.exit(2)
    plugins.register_default_plugins()
    return plugins, runtime, JSONEncoder, sdk_dashboard, sdk_prometheus


def pinned_sdk_version() -> str | None:
    req = HERE / "requirements.txt"
    if not req.exists():
        return None
    for line in req.read_text().splitlines():
        m = re.match(rf"\s*{re.escape(SDK_PACKAGE)}\s*==\s*(\S+)", line)
        if m:
            return m.group(1)
    return None


def installed_sdk_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version(SDK_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def provisioned_datasource_uids(dashboards_dir: Path) -> set[str]:
    """The uids the datasource provisioning files next to the dashboards define."""
    uids: set[str] = set()
    for base in (dashboards_dir.parent / "provisioning" / "datasources", HERE / "provisioning" / "datasources"):
        if base.is_dir():
            for f in sorted(base.glob("*.y*ml")):
                for m in re.finditer(r"^\s*uid:\s*['\"]?([\w.-]+)['\"]?\s*$", f.read_text(), re.M):
                    uids.add(m.group(1))
            break
    return uids


def round_trip_losses(original, rebuilt, path="") -> list[str]:
    """Fields of `original` that did not survive the SDK round trip, as paths."""
    out: list[str] = []
    if isinstance(original, dict):
        if not isinstance(rebuilt, dict):
            return [f"{path or '.'}: expected an object, the schema made it {type(rebuilt).__name__}"]
        for key, value in original.items():
            sub = f"{path}.{key}"
            if key not in rebuilt:
                out.append(f"{sub}: not in the Grafana 11 schema (dropped)")
            else:
                out.extend(round_trip_losses(value, rebuilt[key], sub))
    elif isinstance(original, list):
        if not isinstance(rebuilt, list) or len(rebuilt) != len(original):
            return [f"{path}: list changed on the round trip"]
        for i, (a, b) in enumerate(zip(original, rebuilt)):
            out.extend(round_trip_losses(a, b, f"{path}[{i}]"))
    else:
        same_kind = (isinstance(original, bool) == isinstance(rebuilt, bool))
        if original != rebuilt or not same_kind:
            out.append(f"{path}: {original!r} became {rebuilt!r}")
    return out


def template_variables(data: dict) -> dict[str, dict]:
    out = {}
    for var in (data.get("templating") or {}).get("list") or []:
        if isinstance(var, dict) and var.get("name"):
            out[var["name"]] = var
    return out


def referenced_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE_RE.finditer(text)}


def schema_check(dashboards: list[Dashboard], allow_unknown_fields: bool,
                 datasource_uids: set[str]) -> list[tuple[str, str, list[str], list[str]]]:
    """Returns (file, label, problems, warnings) for every dashboard and panel."""
    _, runtime, JSONEncoder, sdk_dashboard, sdk_prometheus = load_sdk()
    results = []
    uids: dict[str, str] = {}
    titles: dict[str, str] = {}
    for dash in dashboards:
        name = dash.path.name
        data = dash.data
        problems: list[str] = []
        warnings: list[str] = []

        # Round trip through the SDK.
        parsed = None
        try:
            parsed = sdk_dashboard.Dashboard.from_json(data)
            rebuilt = json.loads(json.dumps(parsed, cls=JSONEncoder))
        except Exception as error:  # the SDK raises whatever the data provokes
            problems.append(f"does not parse as a Grafana 11 dashboard: {type(error).__name__}: {error}")
        else:
            losses = round_trip_losses(data, rebuilt)
            (warnings if allow_unknown_fields else problems).extend(losses)

        uid = data.get("uid")
        if not isinstance(uid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid):
            problems.append(f"uid {uid!r} must be a fixed string of 1-40 letters, digits, '-' or '_'")
        elif uid in uids:
            problems.append(f"uid {uid!r} is also used by {uids[uid]}")
        else:
            uids[uid] = name
        title = data.get("title")
        if not title:
            problems.append("dashboard has no title")
        elif title in titles:
            problems.append(f"title {title!r} is also used by {titles[title]} (Grafana refuses both in one folder)")
        else:
            titles[title] = name
        schema_version = data.get("schemaVersion")
        if not isinstance(schema_version, int):
            problems.append("schemaVersion is missing or not an integer")
        elif not 36 <= schema_version <= 41:
            warnings.append(f"schemaVersion {schema_version} is not a Grafana 11 schema (39-41)")

        variables = template_variables(data)
        for var_name, var in variables.items():
            ds = var.get("datasource")
            if var.get("type") == "query" and isinstance(ds, dict) and datasource_uids \
                    and ds.get("uid") not in datasource_uids and not str(ds.get("uid", "")).startswith("$"):
                problems.append(f"variable ${var_name} uses datasource uid {ds.get('uid')!r}, "
                                f"provisioned: {sorted(datasource_uids)}")
        results.append((name, f"dashboard {data.get('title')!r}", problems, warnings))

        # Panels.
        ids: dict[int, str] = {}
        parsed_panels = list(walk_sdk_panels(parsed.panels)) if parsed is not None else []
        for index, panel in enumerate(walk_panels(data.get("panels"))):
            label = panel_label(panel)
            p_problems: list[str] = []
            p_warnings: list[str] = []
            ptype = panel.get("type")
            pid = panel.get("id")
            if not isinstance(pid, int):
                p_problems.append("panel has no integer id")
            elif pid in ids:
                p_problems.append(f"panel id {pid} is also used by {ids[pid]!r}")
            else:
                ids[pid] = panel.get("title") or ptype
            if not panel.get("title"):
                p_problems.append("panel has no title")
            grid = panel.get("gridPos")
            if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "hwxy"):
                p_problems.append("gridPos needs integer h, w, x, y")
            elif grid["x"] + grid["w"] > 24:
                p_problems.append(f"gridPos x+w = {grid['x'] + grid['w']} is wider than 24 columns")
            if ptype == "row":
                if not panel.get("collapsed") and panel.get("panels"):
                    p_problems.append("an expanded row must not hold panels (Grafana drops them)")
                results.append((name, label, p_problems, p_warnings))
                continue
            if not isinstance(ptype, str) or runtime.panelcfg_config(ptype) is None:
                p_problems.append(f"panel type {ptype!r} is not a core Grafana 11 panel")
            if not panel.get("description"):
                p_problems.append("panel has no description")
            if ptype in NO_QUERY_PANELS:
                results.append((name, label, p_problems, p_warnings))
                continue
            unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
            if not unit and ptype not in ("table", "state-timeline", "status-history"):
                p_warnings.append("no unit set (fieldConfig.defaults.unit)")

            ds = panel.get("datasource")
            if not isinstance(ds, dict) or not ds.get("uid"):
                p_problems.append("panel has no datasource {type, uid}")
            else:
                if ds.get("type") != "prometheus":
                    p_problems.append(f"panel datasource type is {ds.get('type')!r}, not 'prometheus'")
                uid_ref = str(ds.get("uid"))
                if datasource_uids and uid_ref not in datasource_uids and not uid_ref.startswith("$"):
                    p_problems.append(f"panel datasource uid {uid_ref!r} is not provisioned "
                                      f"(provisioned: {sorted(datasource_uids)})")
            targets = panel.get("targets")
            if not targets:
                p_problems.append("panel has no targets")
            refs: set[str] = set()
            for t_index, target in enumerate(targets or []):
                ref = target.get("refId") or f"#{t_index}"
                if not target.get("refId"):
                    p_problems.append(f"target {ref} has no refId")
                elif ref in refs:
                    p_problems.append(f"refId {ref} is used twice")
                refs.add(ref)
                if not str(target.get("expr") or "").strip():
                    p_problems.append(f"target {ref} has no expr")
                tds = target.get("datasource")
                if isinstance(tds, dict) and isinstance(ds, dict) and tds.get("uid") != ds.get("uid"):
                    p_problems.append(f"target {ref} uses datasource {tds.get('uid')!r}, the panel {ds.get('uid')!r}")
                for var in referenced_variables(str(target.get("expr") or "")):
                    if var not in GLOBAL_VARIABLES and var not in variables:
                        p_problems.append(f"target {ref} uses ${var}, which the dashboard does not define")
            # The SDK must have read the targets as Prometheus queries.
            if index < len(parsed_panels) and parsed_panels[index] is not None:
                for sdk_target in parsed_panels[index].targets or []:
                    if not isinstance(sdk_target, sdk_prometheus.Dataquery):
                        p_problems.append("a target did not parse as a Prometheus query "
                                          "(panel datasource type missing or not prometheus)")
                        break
            results.append((name, label, p_problems, p_warnings))
    return results


def walk_sdk_panels(panels):
    """The SDK's panels in the same order as walk_panels over the JSON."""
    for panel in panels or []:
        yield panel
        if getattr(panel, "type_val", None) == "row":
            yield from walk_sdk_panels(getattr(panel, "panels", None))


# ----------------------------------------------------------------------------- queries


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:  # 400/422 carry a JSON error
            body = error.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {error.code}: {body[:200]!r}"}
        return json.loads(body)

    def metric_names(self) -> set[str]:
        reply = self.get("/api/v1/label/__name__/values")
        if reply.get("status") != "success":
            raise RuntimeError(f"label values: {reply.get('error')}")
        return set(reply["data"])

    def scrape_interval(self) -> float | None:
        """The longest scrape_interval in Prometheus's loaded configuration."""
        try:
            reply = self.get("/api/v1/status/config")
            yaml = reply["data"]["yaml"]
        except (KeyError, TypeError, ValueError, OSError):
            return None
        values = [parse_duration(v) for v in re.findall(r"^\s*scrape_interval:\s*(\S+)", yaml, re.M)]
        values = [v for v in values if v]
        return max(values) if values else None

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)


@dataclass
class Substitution:
    rate_interval: float
    interval: float
    range_seconds: float


def variable_value(var: dict) -> str:
    """What a template variable stands for in the check: its current value, All → allValue."""
    current = var.get("current") or {}
    value = current.get("value")
    values = value if isinstance(value, list) else [value] if value not in (None, "") else []
    if not values or "$__all" in values or "All" in values:
        if var.get("allValue"):
            return str(var["allValue"])
        if var.get("type") in ("constant", "textbox") and var.get("query"):
            return str(var["query"])
        return ".+"
    if len(values) == 1:
        return str(values[0])
    # As Grafana's Prometheus datasource: regex metacharacters escaped with a backslash
    # that is itself escaped for the PromQL string literal.
    return "(" + "|".join(re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", str(v)) for v in values) + ")"


def substitute(expr: str, sub: Substitution, variables: dict[str, dict]) -> str:
    now_ms = int(time.time() * 1000)
    builtins = {
        "__rate_interval": fmt_duration(sub.rate_interval),
        "__rate_interval_ms": str(int(sub.rate_interval * 1000)),
        "__interval": fmt_duration(sub.interval),
        "__interval_ms": str(int(sub.interval * 1000)),
        "__range": f"{int(sub.range_seconds)}s",
        "__range_s": str(int(sub.range_seconds)),
        "__range_ms": str(int(sub.range_seconds * 1000)),
        "__from": str(now_ms - int(sub.range_seconds * 1000)),
        "__to": str(now_ms),
    }

    def replace(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return variable_value(variables[name])
        return m.group(0)

    return VARIABLE_RE.sub(replace, expr)


def metric_names_in(expr: str) -> set[str]:
    return set(METRIC_RE.findall(STRING_RE.sub('""', expr)))


def family(name: str, known: set[str]) -> str:
    """The metric family: X for X_bucket / X_sum / X_count of a histogram or summary."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base + "_bucket" in known or (base + "_sum" in known and base + "_count" in known):
                return base
    return name


def missing_metric_message(name: str, known: set[str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            siblings = sorted(n for n in known if n in (base + "_bucket", base + "_sum", base + "_count"))
            if siblings:
                return (f"metric {name} does not exist (Prometheus has {', '.join(siblings)}: "
                        f"{'a summary, not a histogram' if suffix == '_bucket' else 'another type'}?)")
            if base in known:
                return f"metric {name} does not exist ({base} does, but it is not a histogram)"
    close = difflib.get_close_matches(name, [n for n in known if n.startswith("shardcache_")], n=2, cutoff=0.8)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"metric {name} does not exist: Prometheus has never seen it{hint}"


def collect_items(dashboards: list[Dashboard]) -> list[Item]:
    items: list[Item] = []
    for dash in dashboards:
        name = dash.path.name
        data = dash.data
        for var_name, var in template_variables(data).items():
            if var.get("type") != "query":
                continue
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query") or query.get("expr") or ""
            query = str(query or "").strip()
            m = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", query, re.S)
            if m:
                expr = f"count by ({m.group(2)}) ({m.group(1)})"
            elif (m := re.fullmatch(r"query_result\((.*)\)", query, re.S)):
                expr = m.group(1)
            else:
                continue  # label_values(label), metrics(...): nothing to evaluate as PromQL
            items.append(Item(name, f"variable ${var_name}", [Query("var", expr, "variable")]))
        for annotation in (data.get("annotations") or {}).get("list") or []:
            if isinstance(annotation, dict) and annotation.get("expr"):
                # An annotation query is empty whenever nothing happened: only errors count.
                items.append(Item(name, f"annotation {annotation.get('name')!r}",
                                  [Query("annotation", annotation["expr"], "annotation")],
                                  require_result=False))
        for panel in walk_panels(data.get("panels")):
            if panel.get("type") == "row" or panel.get("type") in NO_QUERY_PANELS:
                continue
            queries = [Query(t.get("refId") or f"#{i}", str(t.get("expr") or ""))
                       for i, t in enumerate(panel.get("targets") or [])]
            items.append(Item(name, panel_label(panel), queries))
    return items


def run_item(item: Item, prom: Prometheus, names: set[str], sub: Substitution,
             variables: dict[str, dict], verbose: bool) -> None:
    item.problems = []
    item.series = 0
    item.nan = 0
    item.retryable = True
    if not item.queries:
        item.problems.append("no queries")
    for query in item.queries:
        if not query.expr.strip():
            item.problems.append(f"{query.ref}: empty expr")
            continue
        expr = substitute(query.expr, sub, variables)
        leftover = referenced_variables(expr)
        if leftover:
            item.problems.append(f"{query.ref}: variables left unsubstituted: {sorted(leftover)}")
            continue
        for metric in sorted(metric_names_in(expr)):
            if metric not in names:
                item.problems.append(f"{query.ref}: {missing_metric_message(metric, names)}")
        reply = prom.query(expr)
        if reply.get("status") != "success":
            if reply.get("errorType") == "bad_data":
                item.retryable = False
            item.problems.append(f"{query.ref}: query failed: {reply.get('errorType', '')} {reply.get('error')}"
                                 f"\n        {' '.join(expr.split())}")
            continue
        data = reply.get("data") or {}
        result = data.get("result")
        if data.get("resultType") in ("scalar", "string"):
            count = 1
        else:
            count = len(result or [])
            item.nan += sum(1 for s in result or [] if str((s.get("value") or [0, ""])[1]).lower() == "nan")
        item.series += count
        if count == 0 and item.require_result:
            item.problems.append(f"{query.ref}: empty result\n        {' '.join(expr.split())}")
            for metric in sorted(m for m in metric_names_in(expr) if m in names):
                probe = prom.query(f"count({metric})")
                if probe.get("status") == "success" and not (probe.get("data") or {}).get("result"):
                    item.problems.append(f"{query.ref}: {metric} has no current series "
                                         "(its target is down or stopped exporting it)")
        if verbose:
            print(f"      {query.ref}: {count} series  {' '.join(expr.split())}")


def query_check(dashboards: list[Dashboard], prom: Prometheus, args) -> tuple[list[Item], set[str], set[str]]:
    interval = prom.scrape_interval()
    if args.rate_interval:
        rate_interval = parse_duration(args.rate_interval)
        interval = interval or rate_interval / 4
    else:
        interval = interval or 15.0
        rate_interval = 4 * interval  # Grafana: max($__interval + scrape, 4 × scrape)
    print(f"Prometheus {prom.url}: $__rate_interval={fmt_duration(rate_interval)}, "
          f"$__interval={fmt_duration(interval)}")

    items = collect_items(dashboards)
    variables_of = {d.path.name: template_variables(d.data) for d in dashboards}
    range_of = {}
    for d in dashboards:
        start = str((d.data.get("time") or {}).get("from", "now-15m"))
        range_of[d.path.name] = parse_duration(start[4:]) if start.startswith("now-") else None

    deadline = time.monotonic() + max(args.wait, 0)
    pending = items
    while True:
        names = prom.metric_names()
        for item in pending:
            sub = Substitution(rate_interval, interval, range_of.get(item.dashboard) or 900.0)
            run_item(item, prom, names, sub, variables_of[item.dashboard], args.verbose)
        pending = [i for i in items if not i.ok and i.retryable]
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        print(f"  {len(pending)} panels failing, retrying for up to {int(remaining)}s more…",
              file=sys.stderr, flush=True)
        time.sleep(min(3.0, remaining))

    used: set[str] = set()
    for item in items:
        for query in item.queries:
            used |= {family(m, names) for m in metric_names_in(query.expr)}
    exported = {family(n, names) for n in names if n.startswith("shardcache_")}
    return items, used, exported


# ----------------------------------------------------------------------------- main


def load_dashboards(directory: Path) -> tuple[list[Dashboard], list[tuple[str, str]]]:
    dashboards, errors = [], []
    files = sorted(directory.glob("*.json"))
    if not files:
        errors.append((str(directory), "no *.json dashboards found"))
    for path in files:
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            errors.append((path.name, f"not valid JSON: {error}"))
            continue
        if not isinstance(data, dict):
            errors.append((path.name, "not a JSON object"))
            continue
        dashboards.append(Dashboard(path, data))
    return dashboards, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboards", metavar="DIR", type=Path, default=HERE / "dashboards",
                        help="directory of dashboard JSON files (default: %(default)s)")
    parser.add_argument("--rate-interval", metavar="DURATION",
                        help="value of $__rate_interval (default: 4 × Prometheus's scrape_interval, as Grafana does)")
    parser.add_argument("--schema-only", action="store_true", help="check the JSON only, run no queries")
    parser.add_argument("--wait", metavar="SECONDS", type=float, default=0,
                        help="retry failing queries (and an unreachable Prometheus) for up to this long")
    parser.add_argument("--allow-unknown-fields", action="store_true",
                        help="report fields the Grafana 11 schema does not know as warnings, not failures")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every query as it runs")
    args = parser.parse_args(argv)
    if not args.schema_only and not args.prometheus:
        parser.error("--prometheus URL is required unless --schema-only is given")
    if args.rate_interval and not parse_duration(args.rate_interval):
        parser.error(f"--rate-interval {args.rate_interval!r} is not a duration like 30s or 1m")

    failed = False
    # Schema.
    pinned, installed = pinned_sdk_version(), installed_sdk_version()
    print(f"Schema: {SDK_PACKAGE} {installed or '(not installed)'}")
    if pinned and installed and pinned != installed:
        print(f"  warning: installed {SDK_PACKAGE} {installed} differs from the pinned {pinned}")
    dashboards, load_errors = load_dashboards(args.dashboards)
    for name, error in load_errors:
        print(f"{name:<15} {'(file)':<55} FAIL  {error}")
        failed = True
    uids = provisioned_datasource_uids(args.dashboards)
    bad_files: set[str] = set()
    for name, label, problems, warnings in schema_check(dashboards, args.allow_unknown_fields, uids):
        if problems:
            failed = True
            bad_files.add(name)
            print(f"{name:<15} {label[:55]:<55} FAIL  schema")
            for p in problems:
                print(f"      {p}")
        for w in warnings:
            print(f"{name:<15} {label[:55]:<55} warning: {w}")
    for dash in dashboards:
        if dash.path.name not in bad_files:
            count = sum(1 for p in walk_panels(dash.data.get("panels")) if p.get("type") != "row")
            print(f"{dash.path.name:<15} {str(dash.data.get('title'))[:55]:<55} OK    schema, {count} panels")
    panel_count = sum(1 for d in dashboards for p in walk_panels(d.data.get("panels")) if p.get("type") != "row")
    print(f"Schema: {len(dashboards)} dashboards, {panel_count} panels: {'FAILED' if failed else 'OK'}")
    if args.schema_only:
        return 1 if failed else 0

    # Queries.
    prom = Prometheus(args.prometheus)
    deadline = time.monotonic() + max(args.wait, 0)
    while True:
        try:
            prom.metric_names()
            break
        except (OSError, ValueError, RuntimeError) as error:
            if time.monotonic() >= deadline:
                print(f"error: Prometheus at {args.prometheus} is not answering: {error}", file=sys.stderr)
                return 2
            time.sleep(1)
    args.wait = max(0.0, deadline - time.monotonic())
    items, used, exported = query_check(dashboards, prom, args)
    for item in items:
        status = "OK" if item.ok else "FAIL"
        nan = f" ({item.nan} NaN)" if item.nan else ""
        print(f"{item.dashboard:<15} {item.label[:55]:<55} {status:<4}  {item.series} series{nan}")
        for p in item.problems:
            print(f"      {p}")
        failed |= not item.ok
    unused = sorted(exported - used)
    if unused:
        print(f"warning: {len(unused)} shardcache metrics Prometheus has that no panel uses:")
        for name in unused:
            print(f"      {name}")
    bad = sum(1 for i in items if not i.ok)
    print(f"Queries: {len(items)} checked, {bad} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
