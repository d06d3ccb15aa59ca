"""The project as a whole: status, background jobs, consistency check, the studio."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.errors import StudioError
from studio.cli.console import json_arg, open_project, project_arg, project_file


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("status", help="show what the project holds")
    project_arg(p)
    json_arg(p)

    p = sub.add_parser("jobs", help="list, cancel or retry background jobs")
    project_arg(p)
    p.add_argument("action", nargs="?", default="list", choices=["list", "cancel", "retry"])
    p.add_argument("job", nargs="?", help="job id (cancel, retry)")
    json_arg(p)

    p = sub.add_parser("check", help="check the project's rows, files, jobs and leftovers",
                       description="Report missing or broken files, rows pointing at missing "
                                   "rows, stale jobs, temp files and orphan folders. Exit code "
                                   "0 when nothing is left to fix, 1 otherwise.")
    project_arg(p)
    p.add_argument("--repair", action="store_true",
                   help="reconcile stale jobs and delete temp files (never rows nor user data)")
    p.add_argument("--hashes", action="store_true",
                   help="also read every imported image and compare its digest with the one "
                        "recorded at import (size and modification time are always compared)")
    json_arg(p)


def cmd_status(args: argparse.Namespace) -> int:
    from engine.project import Project

    with Project(project_file(args), create=False) as project:
        s = project.summary()
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    print(f"project {s['project']} (schema {s['schema_version']})")
    for d in s["datasets"]:
        print(f"  dataset   {d['name']:<24} {d['num_images']} images, {d['num_classes']} "
              f"classes, {d['num_train']} train / {d.get('num_val', 0)} val / "
              f"{d['num_test']} test")
    for e in s["encodings"]:
        print(f"  encoding  {e['id']:<24} {e['encoder']} {e['target']} {e['target_id']} "
              f"({e['count']} x {e['dim']}{', offline' if e['offline'] else ''})")
    for m in s["models"]:
        loss = f", loss {m['final_loss']:.4f}" if m["final_loss"] is not None else ""
        print(f"  model     {m['name']:<24} {m['encoder']}, {m['status']}, "
              f"{m['steps_done']} steps{loss}")
    for g in s["generations"]:
        print(f"  generation {g['name']:<23} {g['count']} images")
    for sel in s["selections"]:
        print(f"  selection {sel['name']:<24} {sel['count']} samples")
    for e in s["evaluations"]:
        acc = (f"top-1 {e['top1']:.2f}, top-5 {e['top5']:.2f} on "
               f"{e.get('eval_split') or 'test'}" if e["top1"] is not None else "")
        print(f"  evaluation {e['name']:<23} {e['mix']}, {e['status']} {acc}")
    for x in s["exports"]:
        print(f"  export    {x['folder']} ({x['count']} images)")
    active = [j for j in s["jobs"] if j["status"] not in ("done",)]
    print(f"  jobs      {len(s['jobs'])} in all, {len(active)} not done")
    for j in active:
        print(f"    {j['id']} {j['kind']:<9} {j['status']:<11} {j['title']} {j['error']}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from engine.jobs import JobManager
    from engine.project import Job

    if args.action in ("cancel", "retry") and not args.job:
        raise StudioError(f"jobs {args.action} needs a job id; `rcdm-studio jobs list` "
                          f"shows them")
    with open_project(args, create=False) as project:
        jobs = JobManager(project)
        if args.action == "cancel":
            jobs.cancel(args.job)
        elif args.action == "retry":
            jobs.retry(args.job)
            print("queued again; it runs while a studio is open on the project, or now:",
                  file=sys.stderr)
            job = jobs.wait(args.job)
            print(f"{job.id}: {job.status} {job.error}")
            return 0 if job.status == "done" else 1
        jobs.reconcile()
        rows = [j.model_dump(mode="json") for j in project.list(Job)]
    if args.json:
        print(json.dumps(rows))
    else:
        for j in rows:
            print(f"{j['id']} {j['kind']:<9} {j['status']:<11} {j['title']} {j['error']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.check import check_project

    with open_project(args, create=False) as project:
        report = check_project(project, repair=args.repair, hashes=args.hashes)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        for p in report.problems:
            where = p.get("row") or p.get("path") or ""
            mark = "repaired" if p["repaired"] else "problem"
            print(f"{mark:<8} {p['kind']:<18} {where}: {p['message']}")
        left = sum(not p["repaired"] for p in report.problems)
        hint = "; run with --repair to fix what can be fixed" if left and not args.repair else ""
        print(f"{report.project}: {len(report.problems)} problem(s), "
              f"{len(report.problems) - left} repaired, {left} left{hint}")
    return 0 if report.ok else 1


def cmd_launch(args: argparse.Namespace) -> int:
    from engine.paths import resolve_project
    from studio.access import Quotas, parse_size
    from studio.app import launch

    if args.demo and not args.project:
        args.project = str(resolve_project("demo"))

    quotas = Quotas(max_jobs=args.max_jobs, max_upload=parse_size(args.max_upload, "--max-upload"),
                    max_disk=parse_size(args.max_disk, "--max-disk"))
    launch(project_path=args.project, host=args.host, port=args.port,
           open_browser=not args.no_browser, demo=args.demo, auth=args.auth,
           max_file_size=args.max_upload, share=args.share, quotas=quotas)
    return 0


COMMANDS = {
    "status": cmd_status,
    "jobs": cmd_jobs,
    "check": cmd_check,
}
