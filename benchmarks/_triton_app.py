"""The NVIDIA Triton baseline: the same OBD click model behind a real Triton server.

Run with the Triton venv's python (see ``_triton_env``):

    python -m benchmarks._triton_app --http-port P --grpc-port G --metrics-port M \
        --workspace DIR [--checkpoint PATH] [--max-batch-size 128] [--queue-delay-us 500]

PyTriton starts ``tritonserver`` (bundled in its wheel) with a Python-backend model whose
inference function runs here: it receives whole dynamic batches, featurizes them with
``nudgeserve.models``' featurizer and scores them with the same checkpoint, loaded by the
same loader, as our server. Triton's dynamic batcher forms the batches. The v2 contract
(model, tensor names, dtypes, shapes) is ours (``_load_workload``), so one request set
drives both.

Triton binds to loopback only. PyTriton restricts several endpoints to token holders by
default; only the statistics endpoint is opened, because perf_analyzer reads it.
"""

from __future__ import annotations

import argparse
import signal
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._triton_app")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument(
        "--workspace",
        required=True,
        help="PyTriton's workspace (model store, sockets); must not exist",
    )
    parser.add_argument("--checkpoint", default=None, help="OBD checkpoint (default: shipped)")
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=500,
        help="dynamic batcher max_queue_delay_microseconds",
    )
    parser.add_argument("--instances", type=int, default=1, help="model instances")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error(f"--max-batch-size must be >= 1, got {args.max_batch_size}")

    import torch
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import (
        DEFAULT_PROTECTED_ENDPOINTS,
        Triton,
        TritonConfig,
        TritonSecurityConfig,
    )

    from benchmarks import _load_workload as wl

    scorer = wl.load_obd_scorer(args.checkpoint)
    n_items = scorer.n_items
    n_positions = scorer.n_positions
    # Triton's own threads and the Python backend stub share the 2 cores with this
    # process; one torch thread per instance is what our replicas use too.
    torch.set_num_threads(1)

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        users = inputs[wl.V2_USER_INPUT]
        # Triton hands BYTES tensors over as numpy bytes objects; the featurizer wants str.
        users = np.vectorize(
            lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[object]
        )(users)
        probs = wl.v2_infer(scorer, users, inputs[wl.V2_AFFINITY_INPUT])
        return {wl.V2_OUTPUT: np.ascontiguousarray(probs, dtype=np.float32)}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    )

    def request_stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leave through Triton's context exit, which stops the server

    signal.signal(signal.SIGTERM, request_stop)
    with Triton(config=config, workspace=args.workspace, security_config=security) as triton:
        triton.bind(
            model_name=wl.V2_MODEL,
            infer_func=[infer] * args.instances,
            inputs=[
                Tensor(
                    name=wl.V2_USER_INPUT,
                    dtype=np.bytes_,
                    shape=(len(scorer.featurizer.spec.user_feature_names),),
                ),
                Tensor(name=wl.V2_AFFINITY_INPUT, dtype=np.float32, shape=(n_items,)),
            ],
            outputs=[Tensor(name=wl.V2_OUTPUT, dtype=np.float32, shape=(n_positions, n_items))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=True,
        )
        from nudgeserve import kernels

        print(
            f"triton serving {wl.V2_MODEL} on 127.0.0.1:{args.http_port}; kernel backends "
            f"{kernels.chosen_backends()}",
            flush=True,
        )
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
