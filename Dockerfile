# s4seg on the NGC Triton image (GPU). Not buildable on our development machines (no Docker
# engine there): keep it small and check it where Docker runs.
#   docker build -t s4seg .
#   docker run --gpus all --rm -v $PWD/data:/data s4seg train baseline --config voc --set data.root=/data/VOCdevkit/VOC2012
FROM nvcr.io/nvidia/tritonserver:24.12-py3

WORKDIR /opt/s4seg
COPY pyproject.toml README.md ./
COPY s4seg ./s4seg
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY clients ./clients
COPY model_repository ./model_repository
RUN python3 -m pip install --no-cache-dir --break-system-packages . \
    && s4seg --version

ENTRYPOINT ["s4seg"]
CMD ["--help"]
