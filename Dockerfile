# ESync image: one image for every role (State Server, ps-lite scheduler / server, workers).
#
#   docker build -t esync:latest .
#   docker run --rm esync:latest                          # standalone run on the bundled digits
#   docker run --rm -e DMLC_ROLE=worker -e DMLC_PS_ROOT_URI=... esync:latest -m esync ...
#   docker run --rm -p 10010:10010 --entrypoint python esync:latest \
#       -m StateServer runserver 0.0.0.0:10010 --noreload
#
# See docs/deployment.md and docker-compose.yml.
FROM python:3.11-slim

# The mxnet wheel bundles OpenBLAS and libgfortran.so.3 but links against the system's OpenMP
# runtime (libgomp.so.1), and its libgfortran.so.3 needs libquadmath.so.0; neither is in the
# slim image (libstdc++6, libgcc-s1, zlib1g and libc6 are).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libquadmath0 \
    && rm -rf /var/lib/apt/lists/*

ENV OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . ./
RUN mkdir -p /app/data /app/logs

# State Server port (the ps-lite scheduler listens on DMLC_PS_ROOT_PORT, e.g. 9091).
EXPOSE 10010

ENTRYPOINT ["python", "main.py", "-dd", "/app/data"]
CMD ["-m", "local", "-n", "lenet", "--dataset", "digits", "--rounds", "300"]
