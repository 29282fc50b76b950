"""The platform's API export as a meter list: JSON as its list endpoints return it
(`{count, next, previous, results}` pages), one endpoint's pages or an object of them by endpoint
(`meter-devices`, `network-interfaces`, `amr-tasks`, `amr-task-groups`, `meter-security-keys`).

Each meter keeps the record exactly as exported (`platform_record`), so no field is lost even where
our model has no column for it; references by UUID (network interface, tasks, groups) are resolved
against the other endpoints' pages.
"""

from __future__ import annotations

import json
from typing import Any

# The platform's protocol names -> our URL schemes (TCP: the platform reaches meters over IP).
SCHEMES = {"iec62056-21": "iec62056-21+tcp", "lis-200": "lis200+tcp", "i-flag": "corus+tcp",
           "modbus": "modbus+tcp", "dlms-cosem": "dlms+tcp", "mbus": "mbus+tcp"}
TASK_FIELDS = ("name", "schedule", "task_call", "meter_execution_type", "task_kwargs",
               "run_offset_seconds", "is_active", "description")


def _error(path: str, text: str):
    from utilitarian.amr.registry_import import ImportErrors

    return ImportErrors(path, [(None, text)])


def _results(value: Any, path: str, what: str) -> list[dict]:
    """Records of one endpoint: a page, a list of pages, or a plain list of records."""
    pages = value if isinstance(value, list) and value and all(isinstance(p, dict) and "results" in p
                                                               for p in value) else [value]
    records = []
    for page in pages:
        items = page.get("results") if isinstance(page, dict) else page
        if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
            raise _error(path, f"{what}: expected {{count, next, previous, results}} pages of objects")
        records += items
    return records


def rows_from_export(path: str, text: str):
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(path, f"invalid JSON: {exc}") from None
    if isinstance(doc, dict) and "results" in doc or isinstance(doc, list):
        doc = {"meter-devices": doc}
    if not isinstance(doc, dict):
        raise _error(path, "expected an object of endpoint pages or one endpoint's pages")
    known = {"meter-devices", "network-interfaces", "amr-tasks", "amr-task-groups", "meter-security-keys"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise _error(path, f"unknown endpoint(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    meters = _results(doc.get("meter-devices", []), path, "meter-devices")
    interfaces = {r.get("id"): r for r in _results(doc.get("network-interfaces", []), path, "network-interfaces")}
    tasks = _results(doc.get("amr-tasks", []), path, "amr-tasks")
    groups = _results(doc.get("amr-task-groups", []), path, "amr-task-groups")
    keys = {(k.get("meter") if isinstance(k.get("meter"), str) else (k.get("meter") or {}).get("id")): k
            for k in _results(doc.get("meter-security-keys", []), path, "meter-security-keys")}
    task_by_id = {t.get("id"): t for t in tasks}
    group_by_id = {g.get("id"): g for g in groups}
    task_rows = [(None, {**{k: t[k] for k in TASK_FIELDS if k in t and t[k] is not None},
                         **({"uuid": t["id"]} if t.get("id") else {})}) for t in tasks]
    group_rows = [(None, {"name": g.get("name"),
                          "tasks": [task_by_id.get(i, {}).get("name", i) for i in g.get("tasks", g.get("amr_tasks", []))]})
                  for g in groups]
    return [(None, _meter_row(m, interfaces, task_by_id, group_by_id, keys)) for m in meters], task_rows, group_rows


def _meter_row(m: dict, interfaces: dict, task_by_id: dict, group_by_id: dict, keys: dict) -> dict:
    from utilitarian.amr.environments import canonical_execution_type, default_execution_type

    row: dict[str, Any] = {"name": m.get("name"), "uuid": m.get("id"), "platform_record": json.dumps(m, sort_keys=True)}
    for key in ("external_system_reference", "manufacturer_serial"):
        if m.get(key):
            row[key] = m[key]
    org = m.get("organization")
    if org:
        row["organization"] = org.get("name") or org.get("id") if isinstance(org, dict) else str(org)
    if m.get("has_current_transformer") and m.get("current_transformer_ratio"):
        row["ct_ratio"] = m["current_transformer_ratio"]
    if m.get("has_voltage_transformer") and m.get("voltage_transformer_ratio"):
        row["vt_ratio"] = m["voltage_transformer_ratio"]
    if "is_active" in m:
        row["active"] = bool(m["is_active"])
    iface = interfaces.get(m.get("network_interface"))
    scheme = SCHEMES.get(m.get("protocol"), f"{m.get('protocol')}+tcp")
    if iface is not None:
        host = iface.get("host") or iface.get("fqdn") or iface.get("static_ip_address")
        row["url"] = f"{scheme}://{host}:{iface.get('port')}"
        if m.get("iec62056_21_address"):
            row["url"] += f"?address={m['iec62056_21_address']}"
        row["can_block"] = bool(iface.get("can_block"))
    # else: no url -> the row is refused with "url: is required", naming the meter
    task_names = [task_by_id.get(t, {}).get("name", t) for t in m.get("meter_tasks", [])]
    group_names = [group_by_id.get(g, {}).get("name", g) for g in m.get("task_groups", [])]
    row["tasks"], row["groups"] = task_names, group_names
    types = {canonical_execution_type(t["meter_execution_type"]) for t in task_by_id.values()
             if t.get("meter_execution_type") and (t.get("name") in task_names or any(
                 t.get("id") in group_by_id.get(g, {}).get("tasks", group_by_id.get(g, {}).get("amr_tasks", []))
                 for g in m.get("task_groups", [])))}
    protocol = scheme.split("+")[0]
    try:
        fallback = default_execution_type(protocol) or ""
    except Exception:  # a broken read_schemes plugin: the row is refused as lacking a type
        fallback = ""
    row["execution_type"] = types.pop() if len(types) == 1 else fallback
    key = keys.get(m.get("id"))
    if key and key.get("iec62056_21_password"):
        row["password"] = key["iec62056_21_password"]
    return row
