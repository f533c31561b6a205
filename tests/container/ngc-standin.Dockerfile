# Local stand-in of nvcr.io/nvidia/tritonserver:24.10-py3 for the container tests (no registry
# is reachable from the test machines). tests/container/setup.sh assembles the context:
#   python/        CPython 3.10 (the base's python3), relocated to /usr/local
#   tritonserver/  the nvidia-pytriton wheel's Triton 2.51.0 laid out as NGC does: bin/,
#                  lib/, backends/python/ with the 3.10 backend stub, caches/
#   ca-certificates.crt  the host's bundle: TLS is re-signed on these machines, so pip in a
#                  build needs it. Only this stand-in carries it; docker/Dockerfile does not.
# It cannot stand in for CUDA inside the container or the NGC-only backends (ONNX Runtime,
# TensorRT, PyTorch).
FROM virnucpro-debian-rootfs:bookworm
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY python/ /usr/local/
COPY tritonserver/ /opt/tritonserver/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The wheel's libraries carry hashed names that the binaries name directly; the backend
# stub's RPATH points into the wheel's tree, so the loader must find them by ldconfig.
RUN echo /opt/tritonserver/lib > /etc/ld.so.conf.d/tritonserver.conf \
    && ldconfig \
    && ln -s /usr/local/bin/python3.10 /usr/bin/python3 \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf \
    && groupadd --gid 1000 triton-server \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash triton-server \
    && python3 -c "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid" \
    && for binary in /opt/tritonserver/bin/tritonserver /opt/tritonserver/backends/python/*.so \
                     /opt/tritonserver/backends/python/triton_python_backend_stub; do \
         ! ldd "$binary" | grep "not found" || exit 1; \
       done
ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="NGC tritonserver:24.10-py3 stand-in (tests only)"
