"""Which kernel reads a decode step's weights fastest: one decoder layer's products at real PaliGemma width, run by
each candidate kernel, in fp32 and bf16, at the batch sizes decoding runs.

    python bench/bench_decode_kernels.py [--batch-sizes 1 4 16 --repeats 20 --threads 2]

A decode step is bounded by the bytes of weight it reads (bench_decode.py): this measures, for the seven products of
one Gemma layer of PaliGemma 2 3B (hidden 2304, 8 query heads and 4 KV heads of 256, MLP 9216: 81 M weights, larger
than any cache), the time of one pass over them and the bandwidth that makes (weight bytes / time). Candidates:

- ``torch``: ``F.linear``, what the model runs (MKL for fp32; oneDNN for bf16 where the CPU has bf16 instructions,
  which then packs the weight into its own layout on every call; torch's own matrix-vector kernel elsewhere);
- ``torch, oneDNN off``: ``F.linear`` under ``torch.backends.mkldnn.flags(enabled=False)`` (bf16: torch's own
  kernels, whose one-row product is a dot per weight row);
- ``oneDNN prepacked``: the weight packed once (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's
  freezing pass does) and ``torch.ops.mkldnn._linear_pointwise`` per call: a decode-time view of the weights;
- ``oneDNN prepacked, shared inputs as one``: the same, with the products of one input (q, k, v; gate, up) as one
  product by their weights packed side by side and split after, as our decode runs them;
- ``memory read, no product``: each weight's bytes read once and nothing multiplied (their largest as int16): the
  bandwidth that bounds every kernel's pass here, so the ceiling of any decode's speed-up at real width.

Each cell also gives the largest difference from ``torch``'s output relative to its largest value (rounding: a
kernel that the decode would use must stay within bf16's own error, ~4e-3). The kernels run interleaved and the
cells are medians; a kernel this CPU refuses says so (oneDNN's bf16 path needs AVX512 or AVX-NE-CONVERT).
"""

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from machine import cpu_kind, cpu_name

from paligemma.errors import one_line

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP = 2304, 8, 4, 256, 9216
# (in, out) of q, k, v, o, gate, up, down
PRODUCTS = [(HIDDEN, HEADS * HEAD_DIM), (HIDDEN, KV_HEADS * HEAD_DIM), (HIDDEN, KV_HEADS * HEAD_DIM),
            (HEADS * HEAD_DIM, HIDDEN), (HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN)]  # fmt: skip
SHARED_INPUTS = [[0, 1, 2], [3], [4, 5], [6]]  # the products of one input: q k v; o; gate up; down
GROUP_OF = {i: group for group in SHARED_INPUTS for i in group}


def plain(weights: list[torch.Tensor], batch_size: int):
    return lambda x, i: F.linear(x, weights[i])


def onednn_off(weights: list[torch.Tensor], batch_size: int):
    def run(x, i):
        with torch.backends.mkldnn.flags(enabled=False):
            return F.linear(x, weights[i])

    return run


def onednn_prepacked(weights: list[torch.Tensor], batch_size: int):
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, batch_size) for w in weights]
    return lambda x, i: torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], "")


def onednn_prepacked_shared_inputs(weights: list[torch.Tensor], batch_size: int):
    """A group's first product computes the whole group's (one product, split); the others return their part."""
    packed = {g[0]: torch.ops.mkldnn._reorder_linear_weight(torch.cat([weights[i] for i in g]), batch_size)
              for g in SHARED_INPUTS}  # fmt: skip
    outputs = {}

    def run(x, i):
        group = GROUP_OF[i]
        if i == group[0]:
            product = torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], "")
            outputs.update(zip(group, product.split([weights[j].shape[0] for j in group], -1), strict=True))
        return outputs.pop(i)

    return run


def memory_read(weights: list[torch.Tensor], batch_size: int):
    """No product: each weight's bytes read once (their largest as int16), what bounds any kernel's pass."""
    raw = [w.view(torch.int16) for w in weights]
    return lambda x, i: raw[i].max()


KERNELS = {
    "torch": plain,
    "torch, oneDNN off": onednn_off,
    "oneDNN prepacked": onednn_prepacked,
    "oneDNN prepacked, shared inputs as one": onednn_prepacked_shared_inputs,
}
READ = "memory read, no product"


def layer_pass(kernel, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [kernel(x, i) for i, x in enumerate(inputs)]


def measure(dtype: torch.dtype, batch_size: int, repeats: int) -> dict[str, tuple[float, float | None] | str]:
    """kernel name -> (median seconds of a layer pass, largest difference from ``torch`` / its largest |value|;
    None for the memory read),
    or why this CPU refuses the kernel."""
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(out, d_in, generator=gen) * d_in**-0.5).to(dtype) for d_in, out in PRODUCTS]
    group_inputs = {
        g[0]: torch.randn(batch_size, PRODUCTS[g[0]][0], generator=gen).to(dtype) for g in SHARED_INPUTS
    }
    inputs = [
        group_inputs[GROUP_OF[i][0]] for i in range(len(PRODUCTS))
    ]  # a group's products share one input
    kernels, results = {}, {}
    for name, make in {**KERNELS, READ: memory_read}.items():
        try:
            kernels[name] = make(weights, batch_size)
            layer_pass(kernels[name], inputs)  # warm-up
        except RuntimeError as error:
            kernels.pop(name, None)
            results[name] = f"refused: {one_line(error)}"
    reference = layer_pass(kernels["torch"], inputs)
    times = {name: [] for name in kernels}
    for _ in range(repeats):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            layer_pass(kernel, inputs)
            times[name].append(time.perf_counter() - start)
    results[READ] = (statistics.median(times.pop(READ)), None)
    for name in times:  # the products
        outputs = layer_pass(kernels[name], inputs)
        error = max(((o.float() - r.float()).abs().max() / r.float().abs().max()).item()
                    for o, r in zip(outputs, reference, strict=True))  # fmt: skip
        results[name] = (statistics.median(times[name]), error)
    return results


def table(dtypes: list[torch.dtype], batch_sizes: list[int], repeats: int) -> str:
    """Markdown: a row per (dtype, batch), a column per kernel: ms per layer pass, GB/s, relative difference."""
    params = sum(d_in * out for d_in, out in PRODUCTS)
    names = [*KERNELS, READ]
    lines = ["| dtype, batch | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for dtype in dtypes:
        weight_bytes = params * torch.tensor([], dtype=dtype).element_size()
        for batch_size in batch_sizes:
            results = measure(dtype, batch_size, repeats)
            cells = []
            for name in names:
                result = results[name]
                if isinstance(result, str):
                    cells.append(result)
                else:
                    seconds, error = result
                    difference = "" if error is None else f", {error:.0e}"
                    cells.append(
                        f"{seconds * 1e3:.2f} ms, {weight_bytes / seconds / 1e9:.1f} GB/s{difference}"
                    )
            lines.append(f"| {str(dtype).removeprefix('torch.')}, {batch_size} | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"]
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()} ({cpu_kind()}), torch {torch.__version__}, threads={torch.get_num_threads()}")
    params = sum(d_in * out for d_in, out in PRODUCTS)
    print(f"One decoder layer's products: {params / 1e6:.1f} M weights; cells: ms per pass, GB/s of weights, "
          "largest difference from torch's output / its largest value")  # fmt: skip
    print(table([getattr(torch, d) for d in args.dtypes], args.batch_sizes, args.repeats))


if __name__ == "__main__":
    main()
