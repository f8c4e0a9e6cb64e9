"""Export a student for another runtime: `bertnas export --format onnx --model DIR --output DIR`.

  bertnas export --format onnx --model runs/sst2-4L-312/export --output runs/sst2-4L-312/export-onnx
  bertnas export --format onnx --model DIR --output DIR-int8 --quantize int8    # ONNX Runtime's int8
  bertnas export --format onnx --model DIR --output DIR-int8 --quantize int8 --evaluate --task sst2

--format onnx writes model.onnx (inputs input_ids, attention_mask, token_type_ids, int64, dynamic batch and
sequence axes; outputs logits, or start_logits/end_logits for span extraction), config.json and the
tokenizer files: a directory that onnxruntime, optimum-style serving code, `bertnas evaluate` and `bertnas
predict` take. Any float32 export converts, heterogeneous and shared-layer students included; a CRF
tagger's graph computes the emission scores and its CRF scores go beside it (decoding stays in bertnas).
--quantize int8 writes ONNX Runtime's dynamic int8 variant instead (int8 weights per output channel,
activations quantized at run time). Needs the `onnx` extra: pip install 'bertnas[onnx]'. With --json the
last line of stdout is one JSON object: the path, sizes and the largest |ONNX - Flax| output difference
measured on a probe batch. --evaluate also scores the source and the ONNX model (with onnxruntime) on
--split of their task, the drop of its metric and how often their predictions agree (`evaluation`), as
`bertnas quantize --evaluate` does. The export gets a model card (README.md); --push-to-hub REPO uploads
it to the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import json

from distill import cli
from distill.export.scheme import SCHEMES

FORMATS = ("onnx",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="float32 model directory (an export)")
    p.add_argument("--output", required=True, help="directory for the exported model")
    p.add_argument("--format", default="onnx", choices=list(FORMATS), help="what to export to (default onnx)")
    p.add_argument("--quantize", default=None, choices=list(SCHEMES),
                   help="int8: ONNX Runtime's dynamic quantization (int8 weights per output channel, activations "
                   "per tensor at run time, int8 embeddings)")
    p.add_argument("--opset", type=cli.at_least(1), default=None,
                   help="ONNX opset, 17..23 (default 17: onnxruntime >= 1.14 and most runtimes)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it holds an export of ours")
    cli.add_compare_args(p)
    cli.add_hub_arg(p, "the ONNX export")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true")


def main(args: argparse.Namespace) -> int:
    from distill.export.onnx import onnx_export

    opset = {} if args.opset is None else {"opset": args.opset}
    cli.check_hub_arg(args)
    summary = onnx_export(args.model, args.output, quantize=args.quantize, overwrite=args.overwrite, **opset)
    if args.evaluate:
        summary["evaluation"] = cli.compare_from_args(args)
    summary.update(cli.finish_export(args, args.output))
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>22}: {v}")
    return 0
