# syntax=docker/dockerfile:1
# One image for every workmesh role; compose.yaml picks the role with the command
# (`workmesh migrate`, `workmesh run --role api|dispatcher`).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a virtualenv -------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The package itself. README.md* is a glob so the build does not fail before the README exists
# (pyproject.toml names it as the long description; setuptools only warns when it is missing).
COPY README.md* alembic.ini ./
COPY workmesh/ workmesh/
COPY brokers/ brokers/
COPY handlers/ handlers/
COPY schemas/ schemas/
COPY models/ models/
COPY migrations/ migrations/
COPY rabbitmq/ rabbitmq/
RUN pip install --no-deps . \
    && workmesh --help > /dev/null

# ---- runtime: the virtualenv only, run as an unprivileged user ----------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORKMESH_HTTP_HOST=0.0.0.0 \
    WORKMESH_HTTP_PORT=8080

RUN groupadd --system --gid 10001 workmesh \
    && useradd --system --uid 10001 --gid workmesh --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin workmesh \
    && mkdir -p /app/data \
    && chown -R workmesh:workmesh /app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# Numeric, so an orchestrator that insists on a non-root user can check it without a lookup.
USER 10001:10001

EXPOSE 8080
ENTRYPOINT ["workmesh"]
CMD ["run", "--role", "api"]
