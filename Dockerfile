# s4seg on the NGC Triton image: Triton's native ONNX Runtime backend on the GPU, the gateway in
# front, one entrypoint (`s4seg serve`) that starts both. It can not be built on our development
# machines (no Docker engine there); build and check it where Docker and a GPU are:
#
#   docker build -t s4seg .
#   docker run --gpus all --rm --shm-size=1g -p 8080:8080 -v $PWD/model_repository:/models s4seg
#   curl -F file=@photo.jpg 'http://127.0.0.1:8080/v1/segment?format=json'
#
# With an empty /models the first start trains and publishes the demo model (s4seg quickstart).
# Publish your own: `s4seg export ... --out exp && s4seg publish exp --repository /models
# --runtime onnxruntime` (the running server picks it up without a restart).
# 25.07 or later: the releases before fixed neither the HTTP chunked-encoding overflow
# (CVE-2025-23310/23311) nor the python backend's shared-memory chain (CVE-2025-23319/23320/
# 23334). By tag: the digest could not be looked up from our machines (pin it where you build).
FROM nvcr.io/nvidia/tritonserver:25.07-py3

WORKDIR /opt/s4seg
# Every package from the hashed lock (the image's Python may be newer than 3.11: the lock holds
# the hashes of every wheel of each pinned release), then s4seg itself without dependencies.
COPY requirements.lock ./
RUN python3 -m pip install --no-cache-dir --break-system-packages --require-hashes --no-deps \
    -r requirements.lock
COPY pyproject.toml README.md ./
COPY s4seg ./s4seg
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY clients ./clients
COPY workflows ./workflows
RUN python3 -m pip install --no-cache-dir --break-system-packages --no-deps . \
    && s4seg --version
# Not root (review L7).
RUN useradd --uid 10001 --user-group --home-dir /home/s4seg --create-home s4seg
USER 10001

# The image's own tritonserver (with the onnxruntime backend), the native runtime, Triton on
# loopback inside the container, the gateway on every interface of the container.
ENV S4SEG_TRITON_BINARY=/opt/tritonserver/bin/tritonserver \
    S4SEG_RUNTIME=onnxruntime \
    S4SEG_REPOSITORY=/models \
    S4SEG_HOST=0.0.0.0 \
    S4SEG_PORT=8080 \
    S4SEG_LOG_DIR=/tmp/s4seg
VOLUME /models
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s CMD curl -fs http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["s4seg"]
CMD ["serve"]
