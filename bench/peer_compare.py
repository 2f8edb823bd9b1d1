"""idjax against the PyTorch peer (diffusers' Latte) at issue 17's shape,
timed alternately in one run, so both see the same load on a shared machine.

  python bench/peer_compare.py [--rounds 6] [--tree before=/tmp/idjax_main] \
      [--xla-flags noynn=--xla_cpu_experimental_ynn_fusion_type=] \
      [--peer-python /work/torch-venv/bin/python] [--out bench/results/peer_compare.json]
  python bench/peer_compare.py --measure config --config configs/tiny_latent.py \
      --tree before=/tmp/idjax_main --out bench/results/tiny_latent_compare.json

Starts `bench/train_step.py --measure peer-shape --serve` (this tree, and any
--tree NAME=PATH, e.g. an older checkout for a before/after; and this tree
again under each --xla-flags NAME=FLAGS, which replaces XLA_FLAGS) and
`bench/peer_latte.py --serve` (in the peer's own virtual environment: torch
and diffusers are not project dependencies), waits until each has compiled
and warmed up, then asks each in turn, round after round (the order rotates),
for one 4096^2 float32 matmul and one train step. Prints each one's median
step, FLOPs per step (idjax: the analytic count of idjax.models.flops; Latte:
torch's FlopCounterMode; both count matmuls and attention products only),
achieved GFLOP/s, and the share of the matmul peak (the fastest 4096^2
matmul any of them measured). With `--measure config` it times the config's
own step instead, in each tree, without the peer (a before/after of the demo).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
  """One --serve process: a request per line in, "@@ {json}" lines out."""

  def __init__(self, name, argv, cwd, env=None):
    self.name = name
    self.proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

  def reply(self):
    for line in self.proc.stdout:
      if line.startswith("@@ "):
        return json.loads(line[3:])
    raise RuntimeError(f"{self.name} exited with {self.proc.wait()}")

  def ask(self, what):
    self.proc.stdin.write(what + "\n")
    self.proc.stdin.flush()
    return self.reply()["seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--config", default="configs/tiny.py", help="idjax config under the shape")
  p.add_argument("--measure", default="peer-shape", choices=("peer-shape", "config"))
  p.add_argument(
      "--tree",
      action="append",
      default=[],
      help="NAME=PATH: also time the idjax of another checkout",
  )
  p.add_argument(
      "--xla-flags",
      action="append",
      default=[],
      help="NAME=FLAGS: also time this tree's idjax under XLA_FLAGS=FLAGS",
  )
  p.add_argument("--peer-python", default="/work/torch-venv/bin/python")
  p.add_argument("--out", default="bench/results/peer_compare.json")
  args = p.parse_args(argv)
  servers = []
  programs = [("idjax", ROOT, None)] + [(*t.split("=", 1), None) for t in args.tree]
  programs += [(name, ROOT, flags) for name, flags in (f.split("=", 1) for f in args.xla_flags)]
  for name, tree, flags in programs:
    tree = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=tree)
    if flags is not None:
      env["XLA_FLAGS"] = flags
    servers.append(
        Server(
            name,
            [
                sys.executable,
                "bench/train_step.py",
                "--config",
                args.config,
                "--measure",
                args.measure,
                "--serve",
            ],
            tree,
            env,
        )
    )
  if args.measure == "peer-shape":
    servers.append(
        Server(
            "latte",
            [args.peer_python, os.path.join(ROOT, "bench", "peer_latte.py"), "--serve"],
            ROOT,
        )
    )
  flops = {}
  for s in servers:  # one at a time, so compiles do not overlap the others' timing
    flops[s.name] = s.reply()["flops_per_step"]
  steps = {s.name: [] for s in servers}
  matmuls = {s.name: [] for s in servers}
  for r in range(args.rounds):
    for s in servers[r % len(servers) :] + servers[: r % len(servers)]:
      matmuls[s.name].append(s.ask("matmul"))
      steps[s.name].append(s.ask("step"))
    print(f"round {r}: " + "  ".join(f"{n} {steps[n][-1]:.2f} s" for n in steps), flush=True)
  for s in servers:
    s.close()
  n = 4096
  peak = max(2.0 * n**3 / min(m) for m in matmuls.values())
  result = dict(rounds=args.rounds, matmul_n=n, matmul_peak_flops_per_s=peak, programs={})
  print(f"4096^2 f32 matmul peak (fastest of any program): {peak / 1e9:.1f} GFLOP/s")
  for name in steps:
    step_s = median(steps[name])
    result["programs"][name] = r = dict(
        step_s=step_s,
        step_times=steps[name],
        flops_per_step=flops[name],
        flops_per_s=flops[name] / step_s,
        share_of_peak=flops[name] / step_s / peak,
        own_matmul_flops_per_s=2.0 * n**3 / min(matmuls[name]),
    )
    print(
        f"{name:>8}: step {step_s:7.2f} s  {flops[name] / 1e9:6.1f} GFLOP/step  "
        f"{r['flops_per_s'] / 1e9:6.1f} GFLOP/s  share of peak {r['share_of_peak']:.3f}  "
        f"(own matmul {r['own_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s)"
    )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
