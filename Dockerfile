# One image for every streamrec service (worker, trainer, replay); see docker-compose.yml.
# Untested on the project's own machines, which have no Docker engine.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned, so the project's torch range adds nothing (pass a CPU index through
# PIP_EXTRA_INDEX_URL at build time to get the small CPU build).
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install --no-cache-dir "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY streamrec ./streamrec
COPY producers ./producers
COPY stream_processors ./stream_processors
COPY models ./models
COPY serving ./serving
COPY generation ./generation
COPY feature_repo ./feature_repo
RUN pip install --no-cache-dir .
ENTRYPOINT ["streamrec"]
CMD ["--help"]
