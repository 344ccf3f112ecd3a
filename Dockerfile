# The keyless image `keyless operator manifests --image` points at: keyless and its clients, nothing of the sandbox.
#   docker build -t registry.example.com/keyless:0.1.0 .
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home keyless
WORKDIR /opt/keyless
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /opt/keyless/src
USER 10001
ENTRYPOINT ["keyless"]
CMD ["operator", "--targets", "/etc/keyless/targets.yaml", "--all-namespaces"]
