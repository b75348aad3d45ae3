# One image for the three services; the compose file picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY giapranh ./giapranh
RUN pip install . && useradd --system --uid 10001 giapranh
USER giapranh

# ingest 8000, notifier 8001, matcher 8002 (each also serves /metrics, /healthz, /readyz)
EXPOSE 8000 8001 8002
CMD ["python", "-m", "services.ingest"]
