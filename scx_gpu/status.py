"""`scx-gpu status`: what sched_ext runs now and what scx-gpu's tiers are doing."""

import time
from pathlib import Path
from typing import Any

from scx_gpu.controlplane import colocation, fallback, intf, stats, topology
from scx_gpu.controlplane.cgroups import processes
from scx_gpu.controlplane.running import RunningScheduler
from scx_gpu.controlplane.runstate import FALLBACK_MODE, run_state, sched_ext_state
from scx_gpu.controlplane.scheduler import PIN_DIR
from scx_gpu.errors import ScxGpuError


def _scheduler_report() -> dict[str, Any]:
    with RunningScheduler() as sched:
        tun, owner, tagged = sched.tunables(), sched.run_state(), sched.gpu_tags()
        totals = stats.Summary(0, sched.stats(), tun.batch_quota_pct, 0).as_dict()
        return {
            "loader_pid": owner.get("pid"),
            "policy": owner.get("config", {}).get("policy"),
            "scx_loader_stopped": owner.get("scx_loader_stopped"),
            "batch_quota_pct": tun.batch_quota_pct,
            "batch_quota_mode": intf.QuotaMode(tun.quota_mode).name.lower(),
            "last_quota_change": owner.get("last_quota_change"),
            "batch_period_ms": tun.batch_period_ns / 1e6,
            "gpu_ttl_ms": tun.gpu_ttl_ns / 1e6,
            "gpu_tagged_ids": tagged,
            "gpu_processes": _gpu_processes(tagged),
            "tier_tasks": sched.tier_tasks(),
            "totals": {k: v for k, v in totals.items()
                       if k not in ("interval_s", "detector_duty_pct")},
        }


def _gpu_processes(tagged: list[int]) -> list[dict[str, Any]]:
    """Each tagged thread's process, and the GPUs it uses with their local CPUs."""
    return [{"pid": pid, "gpus": [{"minor": g.minor, "pci": g.pci, "node": g.node,
                                   "local_cpus": list(g.local_cpus)} for g in gpus]}
            for pid, gpus in topology.gpu_processes(tagged).items()]


def _gpu_process_lines(processes: list[dict[str, Any]]) -> list[str]:
    lines = []
    for proc in processes:
        gpus = "; ".join(f"GPU {g['minor']} ({g['pci']}, node "
                         f"{'?' if g['node'] is None else g['node']}, local CPUs "
                         f"{topology.format_cpulist(g['local_cpus']) or '?'})"
                         for g in proc["gpus"])
        lines.append(f"  gpu process {proc['pid']}: {gpus or 'no GPU context found'}")
    return lines


def _fallback_report(run: dict[str, Any]) -> dict[str, Any]:
    group = Path(run["batch_group"])
    return {"loader_pid": run.get("pid"), "batch_group": str(group),
            "batch_processes": len(processes(group)), "batch_quota_pct": run["config"]["quota"],
            "guarantee": fallback.WEAKER}


def collect() -> dict[str, Any]:
    state, ops = sched_ext_state()
    report: dict[str, Any] = {"sched_ext": state is not None, "state": state, "ops": ops}
    run = run_state()
    if applied := colocation.saved():
        report["colocation"] = applied
    if (killed := colocation.left_by_killed_loader()) is not None:
        report["colocation_left_by_killed_loader"] = killed
    if run.get("mode") == FALLBACK_MODE:
        report["fallback"] = _fallback_report(run)
    if ops == "scx_gpu" and (PIN_DIR / "stats").exists():
        try:
            report["scx_gpu"] = _scheduler_report()
        except ScxGpuError as exc:
            report["error"] = str(exc)
    return report


def _colocation_lines(applied: dict[str, Any]) -> list[str]:
    lines = [f"  network {n['dev']}: link {n['link_bps'] / 1e6:g} Mbit/s, the rest guaranteed "
             f"{n['rest_guaranteed_bps'] / 1e6:g}, batch at most {n['batch_ceil_bps'] / 1e6:g}"
             for n in applied.get("network", [])]
    lines += [f"  {s['cgroup']}/{s['file']} = {s['value']}"
              for s in applied.get("cgroup_settings", [])]
    lines += [f"  irq {m['irq']} ({','.join(m['names'])}): CPUs {m['before']} -> "
              f"{m['after'] if m['after'] is not None else m['before'] + ' (' + m['why'] + ')'}"
              for m in applied.get("irqs", [])]
    return lines


def render(report: dict[str, Any]) -> str:
    extra = _colocation_lines(report.get("colocation", {}))
    if (killed := report.get("colocation_left_by_killed_loader")) is not None:
        extra.append(f"  co-location settings of a killed scx-gpu load (pid {killed}) are still "
                     "applied: the next `scx-gpu load` restores them")
    if "fallback" in report:
        fb = report["fallback"]
        return "\n".join([f"scx-gpu: {fb['guarantee']}\n  loader pid {fb['loader_pid']}, "
                          f"batch group {fb['batch_group']} ({fb['batch_processes']} "
                          f"processes, quota {fb['batch_quota_pct']}%)", *extra])
    if not report["sched_ext"]:
        return "\n".join(["sched_ext: not in this kernel", *extra])
    lines = [f"sched_ext: {report['state']}" + (f", scheduler {report['ops']}"
                                                if report["ops"] else "")]
    ours = report.get("scx_gpu")
    if ours is None:
        return "\n".join([*lines, "scx-gpu: not running", *extra])
    lines.append(f"scx-gpu: policy {ours['policy']}, loader pid {ours['loader_pid']}, "
                 f"batch quota {ours['batch_quota_pct']}% ({ours['batch_quota_mode']}) per "
                 f"{ours['batch_period_ms']:g} ms, "
                 f"{len(ours['gpu_tagged_ids'])} gpu-tagged thread(s) live")
    lines += _gpu_process_lines(ours["gpu_processes"])
    change = ours["last_quota_change"]
    if change:
        ago = time.time() - change["at"]
        lines.append(f"  last quota change {ago:.0f} s ago: {change['before']}% -> "
                     f"{change['after']}%: {change['reason']}")
    if ours["scx_loader_stopped"]:
        lines.append(f"  took over from scx_loader: {ours['scx_loader_stopped']} starts again "
                     "when scx-gpu exits")
    for name, t in ours["totals"]["tiers"].items():
        lines.append(f"  {name:6s} tasks {ours['tier_tasks'][name]:5d}  runs {t['runs']:8d}  "
                     f"preemptions {t['preemptions']:6d}  "
                     f"wait p50 {t['wait_p50_us']:8.0f}us p99 {t['wait_p99_us']:8.0f}us")
    tot = ours["totals"]
    by_entry = ", ".join(f"{s} {n}" for s, n in tot["detector_hits_by_entry"].items())
    lines.append(f"  batch throttled {tot['batch_throttled_ms']:.0f} ms, floor dispatches "
                 f"{tot['floor_dispatches']}, detector hits {tot['detector_hits']}"
                 + (f" ({by_entry})" if by_entry else ""))
    return "\n".join(lines + extra)
