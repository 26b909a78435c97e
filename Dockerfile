# Stepline server image: `docker build -t stepline .` then
# `docker run -p 50051:50051 stepline --redis-url redis://redis:6379/0`, or `docker compose up`
# (compose.yaml: Redis with AOF and two replicas). Every Python package comes from the hashed
# lock in requirements/: the build backend from build.txt, the server's dependencies from
# runtime.txt; nothing is resolved at build time.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements/build.txt ./requirements/build.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY client/stepline ./client/stepline
COPY server ./server
COPY examples ./examples
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 stepline
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
USER stepline
# gRPC; and the HTTP/JSON API with the console when STEPLINE_HTTP_PORT=8080 is set.
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
r=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2); \
sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"
ENTRYPOINT ["stepline", "serve", "--host", "0.0.0.0", "--port", "50051"]
