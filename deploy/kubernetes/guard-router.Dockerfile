# docker build -f deploy/kubernetes/guard-router.Dockerfile -t registry.example.com/nemo-csr-rail/vllm-router:0.1.17 .
# vllm-router from the package registry: a Rust core (abi3 wheel) plus a Python launcher; no torch, no vLLM.
FROM python:3.12-slim
RUN pip install --no-cache-dir vllm-router==0.1.17
EXPOSE 8000 29000
ENTRYPOINT ["vllm-router"]
