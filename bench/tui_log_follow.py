"""How well the TUI follows a fast log: a run writes 10,000 lines/s for 10 s while the app follows it.

The writer is a separate process (the run's "instance", as the local provider would have it): it
appends timestamped lines to the run's engine.log in 10 ms slices, an ``episode`` event to its
events.jsonl every 100 ms, and records its exit like the local supervisor does. The app runs
headless (Textual's pilot) with its real screens and workers: the dashboard reconciling underneath,
the run view tailing through ``runs.Follower``. Every frame is still composed and encoded to
terminal bytes (the headless driver only skips the write), so the cost of drawing is counted.

Printed:
- lines shown per second while the writer runs, and how long the view takes to catch up after;
- log delay: from a line's write to the first frame drawn after it is in the log widget;
- input delay: from a key press (posted as the terminal driver posts it) to the first frame drawn
  after its action ran; a key every 100 ms.

Usage: python bench/tui_log_follow.py [--rate 10000] [--seconds 10] [--json]
Targets (issue 7): keeps up with the writer; input delay under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the writer (runs in its own process) -----------------------------------------------------------


def writer(workdir: Path, events_path: Path, rate: int, seconds: float) -> int:
    slice_s = 0.01
    filler = "x" * 40
    seq = 0
    episode = 0
    start = time.time()
    next_event = start
    with open(workdir / "engine.log", "a", encoding="utf-8") as log, \
            open(events_path, "a", encoding="utf-8") as events:
        while True:
            now = time.time()
            if now - start >= seconds:
                break
            due = min(int((now - start) * rate), int(seconds * rate))
            if due > seq:
                stamp = f"{time.time():.6f}"
                log.write("".join(f"{stamp} {n:08d} episode {episode} step {n % 290} "
                                  f"reward {n * 0.001:.3f} {filler}\n" for n in range(seq, due)))
                log.flush()
                seq = due
            if now >= next_event:
                episode += 1
                events.write(json.dumps({"v": 1, "ts": now, "event": "episode",
                                         "episode": episode, "episodes": 1000,
                                         "reward": (episode % 17) * 0.5, "loss": 1 / episode,
                                         "val_sharpe": (episode % 9) * 0.1}) + "\n")
                events.flush()
                next_event += 0.1
            time.sleep(max(0.0, slice_s - (time.time() - now)))
    tmp = workdir / "exit.json.tmp"
    tmp.write_text(json.dumps({"exit_code": 0, "signal": None, "ended_at": time.time()}))
    os.replace(tmp, workdir / "exit.json")
    print(seq)
    return 0


# -- the run and the app ----------------------------------------------------------------------------


def make_run(home: Path) -> tuple[Any, str, Path, Path]:
    from dqlctl import registry as reg
    from dqlctl.context import Context

    ctx = Context(home=home)
    rid = reg.new_run_id()
    workdir = ctx.run_dir(rid)
    results = workdir / "results"
    (results / "bench").mkdir(parents=True)
    (workdir / "engine.log").touch()
    events = results / "bench" / "events.jsonl"
    events.touch()
    spec = {"job": {"results_dir": str(results), "experiment": "bench"}, "extra": {"keep": True}}
    ctx.registry.create(name="log-bench", provider="local", spec=spec, region="local",
                        instance_type="localhost", results_uri=str(results / "bench"), run_id=rid)
    ctx.registry.transition(rid, reg.PROVISIONING)
    return ctx, rid, workdir, events


def start_writer(ctx: Any, rid: str, workdir: Path, events: Path, rate: int,
                 seconds: float) -> subprocess.Popen[str]:
    from dqlctl import registry as reg
    from providers.base import Instance
    from providers.local.compute import _proc_start_ticks

    proc = subprocess.Popen([sys.executable, __file__, "--writer", str(workdir), str(events),
                             str(rate), str(seconds)], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    inst = Instance("local", f"local-{proc.pid}", "running", "local", "localhost",
                    extra={"pid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid),
                           "workdir": str(workdir)})
    ctx.registry.update(rid, instance=inst.to_dict(), instance_ids=[inst.instance_id])
    ctx.registry.transition(rid, reg.BOOTSTRAPPING)
    ctx.registry.transition(rid, reg.RUNNING)
    return proc


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def bench(rate: int, seconds: float) -> dict[str, Any]:
    from textual import events as tevents
    from textual.binding import Binding

    from dqlctl.context import Context
    from dqlctl.tui.app import DqlApp
    from dqlctl.tui.screens.run_view import RunScreen
    from dqlctl.tui.widgets import LogView

    class ProbedApp(DqlApp):
        BINDINGS = [*DqlApp.BINDINGS, Binding("f12", "probe", show=False)]

        def action_probe(self) -> None:
            probe["handled"] = time.perf_counter()
            self.sub_title = f"probe {probe['count']}"  # a visible change (the header)

    probe: dict[str, Any] = {"count": 0, "handled": None}
    frames: list[float] = []
    pending_lines: list[float] = []  # write times of batches now in the widget, not yet drawn
    log_delays: list[float] = []

    with tempfile.TemporaryDirectory(prefix="dqlctl-bench-") as tmp:
        home = Path(tmp)
        ctx, rid, workdir, events = make_run(home)
        app = ProbedApp(Context(home=home), freeze_gc=True)  # as run_tui runs it
        original_display = app._display

        def display(screen: Any, renderable: Any) -> None:
            if renderable is not None:
                if hasattr(renderable, "render_segments"):
                    renderable.render_segments(app.console)  # encode the frame as a terminal would
                now_wall = time.time()
                frames.append(time.perf_counter())
                for written in pending_lines:
                    log_delays.append(now_wall - written)
                pending_lines.clear()
            original_display(screen, renderable)

        app._display = display  # type: ignore[method-assign]
        input_delays: list[float] = []

        def press(key: str) -> None:
            """What a terminal driver does with a key: post it to the app's queue."""
            event = tevents.Key(key, None)
            event.set_sender(app)
            assert app._driver is not None
            app._driver.send_message(event)

        async with app.run_test(size=(120, 40)) as pilot:
            app.open_run(rid)
            deadline = time.monotonic() + 30
            while not (isinstance(app.screen, RunScreen) and app.screen.is_mounted):
                if time.monotonic() > deadline or not app.is_running:
                    raise SystemExit("the run view did not open")
                await pilot.pause(0.01)
            log = app.screen.query_one("#log", LogView)
            original_write = log.write_batch

            def write_batch(lines: list[str]) -> None:
                original_write(lines)
                if lines:
                    pending_lines.append(float(lines[-1].split(" ", 1)[0]))

            log.write_batch = write_batch  # type: ignore[method-assign]
            proc = start_writer(ctx, rid, workdir, events, rate, seconds)
            t_start = time.perf_counter()
            while not log.received and time.perf_counter() - t_start < 10:
                await asyncio.sleep(0.01)  # probe while following, not while the view opens
            cpu_start = time.thread_time()  # the event loop's thread: all drawing happens here
            shown_at_end = None
            written = None
            loop_cpu = 0.0
            while True:
                elapsed = time.perf_counter() - t_start
                if shown_at_end is None and proc.poll() is not None:
                    shown_at_end = (log.received, elapsed)
                    loop_cpu = time.thread_time() - cpu_start
                    written = int((proc.stdout.read() if proc.stdout else "0").strip() or 0)
                if written is not None and log.received >= written:
                    break
                if elapsed > seconds + 60 or not app.is_running:
                    break
                # one key press; wait for the first frame after its action ran
                probe["count"] += 1
                probe["handled"] = None
                sent = time.perf_counter()
                press("f12")
                while probe["handled"] is None or not frames or frames[-1] < probe["handled"]:
                    await asyncio.sleep(0.001)
                    if time.perf_counter() - sent > 5:
                        break
                drawn = next((f for f in frames if probe["handled"] and f >= probe["handled"]),
                             None)
                if drawn is not None:
                    input_delays.append(drawn - sent)
                    if os.environ.get("BENCH_TRACE"):
                        print(f"t={sent - t_start:6.2f}s input {1e3 * (drawn - sent):6.1f} ms",
                              file=sys.stderr)
                await asyncio.sleep(0.1)
            caught_up = time.perf_counter() - t_start
            proc.wait()
            shown = log.received
            lines_in_widget = log.line_count
            curve_points = len(app.screen.query_one("#curves").curves.reward)  # type: ignore[attr-defined]
        ctx.close()

    writer_s = shown_at_end[1] if shown_at_end else caught_up
    window_frames = [f for f in frames if t_start <= f <= t_start + writer_s]
    return {
        "written_lines": written or 0,
        "shown_lines": shown,
        "lines_in_widget": lines_in_widget,
        "writer_seconds": round(writer_s, 2),
        "shown_per_s_while_writing": round((shown_at_end[0] if shown_at_end else shown)
                                           / writer_s),
        "catch_up_after_writer_s": round(max(0.0, caught_up - writer_s), 3),
        "frames_per_s": round(len(window_frames) / writer_s, 1),
        "event_loop_busy_pct": round(100 * loop_cpu / writer_s, 1),
        "log_delay_ms": {"p50": round(pct(log_delays, 0.5) * 1e3, 1),
                         "p99": round(pct(log_delays, 0.99) * 1e3, 1),
                         "max": round(max(log_delays, default=float("nan")) * 1e3, 1)},
        "input_delay_ms": {"n": len(input_delays),
                           "p50": round(pct(input_delays, 0.5) * 1e3, 1),
                           "p99": round(pct(input_delays, 0.99) * 1e3, 1),
                           "max": round(max(input_delays, default=float("nan")) * 1e3, 1)},
        "curve_points": curve_points,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--writer"]:
        return writer(Path(argv[1]), Path(argv[2]), int(argv[3]), float(argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=10_000, help="lines per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(bench(args.rate, args.seconds))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ok_rate = result["shown_lines"] >= result["written_lines"] and \
        result["catch_up_after_writer_s"] < 1.0
    ok_input = result["input_delay_ms"]["max"] < 100
    print(f"writer: {result['written_lines']:,} lines in {result['writer_seconds']} s "
          f"({args.rate:,}/s target)")
    print(f"shown:  {result['shown_lines']:,} lines, {result['shown_per_s_while_writing']:,}/s "
          f"while writing; caught up {result['catch_up_after_writer_s']} s after the writer "
          f"stopped; {result['frames_per_s']} frames/s; {result['curve_points']} curve points; "
          f"event loop busy {result['event_loop_busy_pct']}% of one core")
    ld, idl = result["log_delay_ms"], result["input_delay_ms"]
    print(f"log delay (write -> frame):  p50 {ld['p50']} ms  p99 {ld['p99']} ms  max {ld['max']} ms")
    print(f"input delay (key -> frame):  p50 {idl['p50']} ms  p99 {idl['p99']} ms  "
          f"max {idl['max']} ms  ({idl['n']} presses)")
    print(f"keeps up: {'yes' if ok_rate else 'NO'}; input under 100 ms: "
          f"{'yes' if ok_input else 'NO'}  ({result['cpus']} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
