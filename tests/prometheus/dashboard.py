#!/usr/bin/env python3
"""Checks dashboards/sheepdev.json against a live Prometheus (used by run.sh and plot.py).

    dashboard.py check --dashboard F --prom URL --time T --var NAME=VALUE ... \
                       --metrics FILE ... [--counts FILE]

- lints the dashboard's structure (importable: __inputs/__requires, schemaVersion >= 36,
  datasource ${DS_PROMETHEUS}, the template variables, unique panel ids, node_exporter
  descriptions on the Kernel row);
- extracts EVERY expression: each panel target's `expr` (rows' nested panels included) and
  each query variable's label_values(SELECTOR, LABEL), substitutes the template variables
  the way Grafana would for a regex matcher, and runs each as an instant query at --time;
  each must come back with status success and a non-empty result (a label_values variable
  must also carry LABEL);
- every metric name the dashboard mentions (sheepdev_*, node_*, process_*) must be served
  by one of the exporters whose /metrics text is given with --metrics (histogram
  _bucket/_sum/_count map to their family).

Standard library only. Exit status 1 with one line per problem on any failure.
"""
import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

METRIC_RE = re.compile(r"\b((?:sheepdev|node|process)_[A-Za-z0-9_]+)\b")
VAR_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|([A-Za-z0-9_]+))")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)
PROM_DS = "${DS_PROMETHEUS}"
# Families that have no series, and so no text at all in /metrics (the prometheus crate
# renders no HELP/TYPE for an empty vec), until their first event. The dashboard's queries
# on them carry an `or on() ... vector(0)` fallback. Not served is fine for these; with
# --binary the name must then at least be compiled into sheepdev.
LAZY_FAMILIES = {
    "sheepdev_backend_errors_total": "its first series comes with the first failed sheep request",
}


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def var_query_text(v):
    q = v.get("query", "")
    if isinstance(q, dict):
        q = q.get("query", "")
    return q


def expressions(dash):
    """[(where, kind, text, label)]: kind 'expr' (panel target) or 'var' (label_values)."""
    out = []
    for p in walk_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p.get('title')!r} target {t.get('refId')}", "expr",
                            t["expr"], None))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = var_query_text(v)
        m = LABEL_VALUES_RE.match(q)
        if not m:
            raise SystemExit(f"variable {v['name']}: only label_values(SELECTOR, LABEL) is "
                             f"understood here, got {q!r}")
        out.append((f"variable ${v['name']}", "var", m.group(1), m.group(2)))
    return out


def substitute(text, values):
    """Replaces $name / ${name} as Grafana does; unknown variables are an error."""
    def rep(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(name)
        return values[name]
    return VAR_RE.sub(rep, text)


def grafana_regex(value):
    """A literal value as Grafana puts it into a =~ matcher: regex-escaped, then with the
    backslashes doubled for the PromQL string literal."""
    return re.escape(value).replace("\\", "\\\\")


def query(prom, expr, at):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": at})
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400/422 carry a JSON error body
        try:
            return json.load(e)
        except Exception:
            return {"status": "error", "error": f"HTTP {e.code}"}


def served_names(texts):
    names, families = set(), set()
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# TYPE ") or line.startswith("# HELP "):
                parts = line.split()
                if len(parts) >= 3:
                    families.add(parts[2])
            elif line and not line.startswith("#"):
                names.add(re.split(r"[{\s]", line, 1)[0])
    # a histogram's _bucket/_sum/_count (and a summary's _sum/_count) belong to the family
    for n in list(names):
        for suf in ("_bucket", "_sum", "_count"):
            if n.endswith(suf):
                families.add(n[: -len(suf)])
    return names | families


def lint(dash):
    problems = []
    if dash.get("schemaVersion", 0) < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')} < 36")
    inputs = {i.get("name"): i for i in dash.get("__inputs", [])}
    if inputs.get("DS_PROMETHEUS", {}).get("pluginId") != "prometheus":
        problems.append("__inputs lacks the DS_PROMETHEUS prometheus datasource input")
    req = {(r.get("type"), r.get("id")) for r in dash.get("__requires", [])}
    if ("datasource", "prometheus") not in req or ("grafana", "grafana") not in req:
        problems.append("__requires lacks grafana or the prometheus datasource")
    ids = set()
    for p in walk_panels(dash.get("panels", [])):
        ptype = p.get("type")
        if ptype not in {"row"} and ("datasource", ptype) not in req and ("panel", ptype) not in req:
            problems.append(f"panel {p.get('title')!r}: type {ptype} not in __requires")
        if p.get("id") in ids:
            problems.append(f"panel {p.get('title')!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"panel {p.get('title')!r}: gridPos wider than 24")
        if ptype != "row":
            for d in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]:
                if not (isinstance(d, dict) and d.get("uid") == PROM_DS):
                    problems.append(f"panel {p.get('title')!r}: datasource is not {PROM_DS}")
        if any(re.search(r"\bnode_", t.get("expr", "")) for t in p.get("targets", [])):
            if "node_exporter" not in p.get("description", ""):
                problems.append(f"panel {p.get('title')!r}: uses node_exporter metrics but "
                                f"its description does not say it needs node_exporter")
    vars_ = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    want = {
        "instance": ("query", "label_values(sheepdev_build_info, instance)"),
        "device": ("query", 'label_values(sheepdev_device_info{instance=~"$instance"}, device)'),
        "node": ("query", None),
        "disk": (None, None),
    }
    for name, (typ, q) in want.items():
        v = vars_.get(name)
        if v is None:
            problems.append(f"template variable {name} missing")
            continue
        if typ and v.get("type") != typ:
            problems.append(f"template variable {name}: type {v.get('type')}, want {typ}")
        if q and var_query_text(v) != q:
            problems.append(f"template variable {name}: query {var_query_text(v)!r}, want {q!r}")
    dev = vars_.get("device", {})
    if not (dev.get("multi") and dev.get("includeAll")):
        problems.append("template variable device must be multi with All")
    disk = vars_.get("disk", {})
    if disk.get("current", {}).get("value") != "ublkb.*":
        problems.append("template variable disk must default to ublkb.*")
    titles = [p.get("title") for p in dash.get("panels", []) if p.get("type") == "row"]
    if "Kernel (needs node_exporter)" not in titles:
        problems.append('row "Kernel (needs node_exporter)" missing')
    return problems


def check(a):
    dash = json.load(open(a.dashboard))
    values = dict(kv.split("=", 1) for kv in a.var)
    problems = lint(dash)
    exprs = expressions(dash)
    ok = 0
    for where, kind, text, label in exprs:
        try:
            expr = substitute(text, values)
        except KeyError as e:
            problems.append(f"{where}: unknown template variable ${e.args[0]} in {text}")
            continue
        r = query(a.prom, expr, a.time)
        if r.get("status") != "success":
            problems.append(f"{where}: {r.get('errorType', '')} {r.get('error')}\n    {expr}")
            continue
        res = r["data"]["result"]
        if r["data"]["resultType"] in ("vector", "matrix") and not res:
            problems.append(f"{where}: empty result\n    {expr}")
            continue
        if kind == "var" and not any(label in s.get("metric", {}) for s in res):
            problems.append(f"{where}: no series carries label {label}\n    {expr}")
            continue
        ok += 1
        if a.verbose:
            n = len(res) if isinstance(res, list) else 1
            print(f"  ok  {where}: {n} series")

    served = served_names(open(f).read() for f in a.metrics)
    mentioned = set()
    for _, _, text, _ in exprs:
        mentioned.update(METRIC_RE.findall(text))
    binary = open(a.binary, "rb").read() if a.binary else None
    for name in sorted(mentioned - served):
        if name in LAZY_FAMILIES:
            if binary is not None and name.encode() not in binary:
                problems.append(f"the dashboard uses {name}, which is not served and not in {a.binary}")
            else:
                served.add(name)
                print(f"note: {name} has no series yet ({LAZY_FAMILIES[name]})"
                      + (f"; the name is in {a.binary}" if binary is not None else ""))
            continue
        problems.append(f"the dashboard uses {name}, which no scraped exporter serves")

    for p in problems:
        print(f"FAIL {p}")
    if a.counts:
        with open(a.counts, "w") as f:
            f.write(f"{ok} {len(mentioned)}\n")
    print(f"dashboard: {ok}/{len(exprs)} expressions returned data, "
          f"{len(mentioned) - len(mentioned - served)}/{len(mentioned)} metric names served")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--dashboard", required=True)
    c.add_argument("--prom", required=True, help="Prometheus base URL")
    c.add_argument("--time", required=True, help="evaluation time (unix seconds)")
    c.add_argument("--var", action="append", default=[], help="NAME=VALUE, as substituted")
    c.add_argument("--metrics", action="append", default=[], help="an exporter's /metrics text")
    c.add_argument("--binary", help="the sheepdev binary (for families with no series yet)")
    c.add_argument("--counts", help="write 'EXPRESSIONS_OK METRICS_CHECKED' here")
    c.add_argument("-v", "--verbose", action="store_true")
    l = sub.add_parser("list", help="print every expression, one per line")
    l.add_argument("--dashboard", required=True)
    e = sub.add_parser("regex", help="print a literal value as Grafana puts it in a =~ matcher")
    e.add_argument("value")
    a = ap.parse_args()
    if a.cmd == "check":
        sys.exit(check(a))
    if a.cmd == "list":
        for where, _, text, _ in expressions(json.load(open(a.dashboard))):
            print(f"{where}\t{text}")
    if a.cmd == "regex":
        print(grafana_regex(a.value))


if __name__ == "__main__":
    main()
