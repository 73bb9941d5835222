"""A Triton python-backend model that runs one ONNX file with ONNX Runtime, or with OpenVINO.

Publish copies this file as ``model.py`` beside each ``model.onnx``: every step of the s4seg
ensemble (segmenter, classifier, gate) is this runner on another graph. It uses the
CUDA execution provider when Triton gives the instance a GPU, the CPU otherwise; where publish
chose OpenVINO for a network (``engine.json`` beside it: ``publish --precision auto|bf16``), it
opens the graph through ``s4seg.engines``, the one place that opens OpenVINO sessions. Requests
that Triton's dynamic batcher hands over together are concatenated into one call when their
shapes allow.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, "model.onnx")
        self.name = f"{args['model_name']}/{args['model_version']}"
        threads = int(parameters.get("intra_op_threads", "0"))
        engine = {"runtime": "onnxruntime", "precision": "fp32"}
        if os.path.isfile(os.path.join(folder, "engine.json")):  # s4seg.repository.ENGINE_FILE
            with open(os.path.join(folder, "engine.json")) as handle:
                engine.update(json.load(handle))
        if engine["runtime"] == "openvino":
            from s4seg.engines import open_session

            # A graph that does not load fails here, as below: Triton marks the version
            # unavailable and keeps serving the versions that did load.
            self.session = open_session(path, "openvino", engine["precision"], threads=threads)
            self._describe(path)
            return
        gpu = args.get("model_instance_kind") == "GPU"
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle threads sleep: the steps run in separate processes on the same cores, and a
        # step's spinning threads would take them from the next step (s4seg bench serve).
        spinning = parameters.get("allow_spinning", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.log_severity_level = 3
        # A missing or corrupt file fails here: Triton marks this version unavailable and keeps
        # serving the versions that did load.
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self._describe(path)

    def _describe(self, path):
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        pb_utils.Logger.log_info(f"{self.name}: {path} on {self.session.get_providers()[0]}")

    def execute(self, requests):
        responses = [None] * len(requests)
        feeds, live = [], []
        for i, request in enumerate(requests):
            if request.is_cancelled():  # its client is gone (deadline passed): do no work
                error = pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
                responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            live.append(i)
            feed = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = tensor.as_numpy()
            feeds.append(feed)
        for group in self._groups(feeds):
            try:
                batch = {n: np.concatenate([feeds[i][n] for i in group]) for n in feeds[group[0]]}
                results = self.session.run(self.outputs, batch)
            except Exception as error:  # one bad request must not fail the others
                lines = str(error).strip().splitlines()  # may be empty (review L9)
                message = f"{self.name}: {lines[0] if lines else type(error).__name__}"
                for i in group:
                    responses[live[i]] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(message)
                    )
                continue
            start = 0
            for i in group:
                count = len(next(iter(feeds[i].values())))
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + count]))
                    for name, value in zip(self.outputs, results, strict=False)
                ]
                responses[live[i]] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += count
        return responses

    @staticmethod
    def _groups(feeds):
        """Indices of requests that can run as one batch (same inputs, same non-batch shapes)."""
        groups = {}
        for i, feed in enumerate(feeds):
            key = tuple(sorted((n, a.shape[1:], a.dtype.str) for n, a in feed.items()))
            groups.setdefault(key, []).append(i)
        return list(groups.values())
