# docker build -f deploy/kubernetes/guardrails-server.Dockerfile -t registry.example.com/nemo-csr-rail/guardrails-server:0.1.0 .
FROM python:3.11-slim
COPY . /src
RUN pip install --no-cache-dir "/src[server,telemetry]" && rm -rf /src
EXPOSE 8000 9464
CMD ["nemoguardrails", "server", "--config", "/config", "--port", "8000"]
