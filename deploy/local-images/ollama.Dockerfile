# Local stand-in for ollama/ollama where no Ollama image can be had (docker-compose.local.yml):
# the project's fake Ollama server (tests/fake_ollama.py: Ollama's /api/tags, /api/chat and
# /api/pull JSON, keyword verdicts) behind an `ollama serve | list | pull` command.
# Build context: the repository root.
ARG PYTHON_IMAGE=minitwitter-local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
COPY tests/fake_ollama.py /opt/fake-ollama/fake_ollama.py
COPY deploy/local-images/ollama-cli.py /usr/local/bin/ollama
RUN mkdir -p /root/.ollama
ENV OLLAMA_HOST=0.0.0.0:11434
EXPOSE 11434
ENTRYPOINT ["/usr/local/bin/ollama"]
CMD ["serve"]
