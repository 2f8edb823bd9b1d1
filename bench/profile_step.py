"""Where a train step's device time goes: a jax.profiler trace, summarised.

  python bench/profile_step.py --config configs/base.py --config.train.batch_size=16 \
      --out bench/results/profile_base_h100.json [--trace-dir /tmp/trace]

Compiles the config's train step (as bench/train_step.py does), runs two
warm-up steps, traces three, and sums the kernels on the accelerator's
streams (perfetto JSON) by name and by kind: matmul, attention, fused
elementwise, copies/transposes, collectives, other. Prints the top kernels
and each kind's share of the traced device time, and writes them as JSON.

On a CPU the trace has no device streams; its op events carry the names of
the compiled HLO's instructions instead, so each is looked up in the
compiled module and classed by what it computes (a dot; a dynamic-update-
slice or dynamic-slice, as a rolled scan's residual stacks; a transpose or
copy; a reduction; exp; other elementwise), and also summed by the jax op
that made it (bench/results/profile_cpu_notes.md was written from these):

  python bench/profile_step.py --config configs/tiny.py --peer-shape --out bench/results/profile_cpu_peer_shape.json
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import jax

from idjax import configlib, sharding
import train_step as bench

KINDS = (  # first match wins; patterns are matched against lower-cased names
    ("attention", r"cudnn|flash|fmha|attention|softmax"),
    ("matmul", r"gemm|cublas|cutlass|xmma|sm90|matmul|dot"),
    ("collective", r"nccl|all-reduce|all-gather|reduce-scatter|all-to-all|collective"),
    ("copy/transpose", r"memcpy|memset|copy|transpose"),
    ("fused elementwise", r"fusion|loop_|input_|reduce|convert|broadcast|add|multiply"),
)


def kind_of(name: str) -> str:
  low = name.lower()
  for kind, pattern in KINDS:
    if re.search(pattern, low):
      return kind
  return "other"


def summarise_trace(path: str, steps: int) -> dict:
  """Kernels on the device's streams in a perfetto trace, summed by name and
  kind (ms per step). The device's other lines (XLA modules, steps) span the
  kernels and are skipped, so nothing is counted twice."""
  with gzip.open(path, "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  meta = lambda what: {(e["pid"], e.get("tid")) if what == "thread_name" else e["pid"]:
                       e.get("args", {}).get("name", "")
                       for e in events if e.get("ph") == "M" and e.get("name") == what}
  process, thread = meta("process_name"), meta("thread_name")
  device_pids = {pid for pid, name in process.items() if re.search(r"/device:(gpu|tpu)", name.lower())}
  streams = {k for k, name in thread.items() if k[0] in device_pids and "stream" in name.lower()}
  by_name, by_kind = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams:
      name = re.sub(r"[._]\d+$", "", e.get("name", "?"))
      dur = float(e.get("dur", 0.0)) / 1e3 / steps
      by_name[name] += dur
      by_kind[kind_of(name)] += dur
  total = sum(by_kind.values())
  return dict(device_processes=sorted(process[p] for p in device_pids),
              device_lines=sorted(thread[k] for k in streams), kernel_ms_per_step=total,
              by_kind={k: dict(ms=v, share=v / max(total, 1e-9)) for k, v in by_kind.most_common()},
              top=[dict(name=k, ms=v, share=v / max(total, 1e-9))
                   for k, v in by_name.most_common(40)])


CPU_KINDS = (  # (kind, HLO opcodes any of which put an instruction in it), first match wins
    ("matmul", {"dot", "convolution"}),
    ("scan stacking (dynamic-update-slice)", {"dynamic-update-slice"}),
    ("softmax exp", {"exponential"}),
    ("reduce", {"reduce"}),
    ("transpose/copy", {"transpose", "copy"}),
    ("dynamic-slice", {"dynamic-slice"}),
)


def hlo_instructions(hlo_text: str) -> dict:
  """name -> (shape, opcodes inside it (fusions: their computation's, one level
  of nesting), the jax op_name) for every instruction of a compiled module."""
  comps, cur = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      cur = comps.setdefault(m.group(1), [])
    elif cur is not None:
      cur.append(line)
  inst = r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\("
  out = {}
  for lines in comps.values():
    for line in lines:
      m = re.match(inst, line)
      if not m:
        continue
      ops = {m.group(3)}
      for called in re.findall(r"calls=%?([\w.\-]+)", line):
        for inner in comps.get(called, []):
          ops.update(re.findall(r"= \S+ ([\w\-]+)\(", inner))
          for nested in re.findall(r"calls=%?([\w.\-]+)", inner):
            ops.update(re.findall(r"= \S+ ([\w\-]+)\(", "\n".join(comps.get(nested, []))))
      op_name = re.search(r'op_name="([^"]+)"', line)
      out[m.group(1)] = (re.sub(r"\{.*", "", m.group(2)), ops,
                         op_name.group(1) if op_name else "")
  return out


def summarise_cpu_trace(path: str, steps: int, hlo_text: str) -> dict:
  """The op events of a CPU trace (named after HLO instructions), summed by
  kind (CPU_KINDS), by kind and shape, and by the jax op that made them."""
  with gzip.open(path, "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  inst = hlo_instructions(hlo_text)
  by_name, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in inst:
      by_name[e["name"]] += float(e.get("dur", 0.0)) / 1e3 / steps
      count[e["name"]] += 1
  kind = lambda ops: next((k for k, codes in CPU_KINDS if ops & codes), "elementwise")
  by_kind, by_shape, by_source = collections.Counter(), collections.Counter(), collections.Counter()
  for name, ms in by_name.items():
    shape, ops, op_name = inst[name]
    by_kind[kind(ops)] += ms
    if kind(ops) != "matmul":
      by_shape[f"{kind(ops)} {shape}"] += ms
      by_source[re.sub(r"^jit\(\w+\)/", "", op_name)[-100:]] += ms
  total = sum(by_kind.values())
  rows = lambda c, n: [dict(name=k, ms=v, share=v / max(total, 1e-9)) for k, v in c.most_common(n)]
  return dict(device_processes=["cpu"], device_lines=["XLA CPU op events"],
              kernel_ms_per_step=total, ops_per_step=sum(count.values()) / steps,
              by_kind={k: dict(ms=v, share=v / max(total, 1e-9)) for k, v in by_kind.most_common()},
              top=[dict(r, kind=kind(inst[r["name"]][1]), shape=inst[r["name"]][0],
                        op=inst[r["name"]][2][-100:]) for r in rows(by_name, 40)],
              non_matmul_by_kind_and_shape=rows(by_shape, 30),
              non_matmul_by_jax_op=rows(by_source, 30))


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--out", default="bench/results/profile_step.json")
  p.add_argument("--trace-dir", default="/tmp/idjax_trace")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--peer-shape", action="store_true",
                 help="the shape of bench/train_step.py --measure peer-shape (issue 17)")
  args, rest = p.parse_known_args(argv)
  config = configlib.load_config_file(args.config)
  configlib.parse_overrides(config, rest)
  if args.peer_shape:
    config = bench.peer_shape(config)
  if jax.device_count() == 1:
    config.mesh = type(config.mesh)(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  setup, state, batch, enc, _ = bench.prepare(config, bench.random_encoder(ROOT))
  with sharding.activation_sharding(setup.mesh, config.sharding.rules):
    compiled = setup.jitted(batch).lower(state, batch, enc).compile()
  for _ in range(2):
    state, metrics = compiled(state, batch, enc)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      state, metrics = compiled(state, batch, enc)
    jax.block_until_ready(metrics)
  wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
  found = sorted(glob.glob(os.path.join(args.trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not found:
    raise SystemExit(f"no perfetto trace under {args.trace_dir}")
  if jax.default_backend() == "cpu":
    summary = summarise_cpu_trace(found[-1], args.steps, compiled.as_text())
  else:
    summary = summarise_trace(found[-1], args.steps)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  summary.update(device=str(jax.devices()[0].device_kind), config=args.config,
                 overrides=rest, wall_ms_per_step_traced=wall_ms, loss=float(metrics["loss"]),
                 xla_cost_analysis_flops=float(cost.get("flops", float("nan"))))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(summary, f, indent=2)
  print(f"traced {args.steps} steps: wall {wall_ms:.1f} ms/step on {summary['device']}; "
        f"device lines {summary['device_lines'][:8]}")
  print(f"kernels: {summary['kernel_ms_per_step']:.1f} ms/step busy")
  for kind, v in summary["by_kind"].items():
    print(f"  {kind:>18}: {v['ms']:8.2f} ms  {v['share']:.3f}")
  for row in summary["top"][:15]:
    print(f"  {row['share']:.3f}  {row['ms']:8.2f} ms  {row['name'][:100]}")
  for key in ("non_matmul_by_kind_and_shape", "non_matmul_by_jax_op"):
    for row in summary.get(key, [])[:15]:
      print(f"  {row['share']:.3f}  {row['ms']:8.2f} ms  {row['name'][:110]}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
