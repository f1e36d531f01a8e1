# The stevedore agent's own image: a polling (or listening) worker in a
# container, for pools on any container platform (the Helm chart's worker
# pool, packaging/helm). Built by `make agent-image` after `make build`,
# from bin/ (the stevedore binary and its tool bundle) on a glibc base image
# given as BASE_IMAGE (any Debian or Ubuntu image; the bundle's runner needs
# glibc 2.17 or newer for host steps, which run in this container).
#
# The agent drives a Docker Engine outside this container, never one of its
# own: the host's, through its socket, or a sidecar's (Docker in Docker),
# through DOCKER_HOST. The engine bind-mounts each step's workspace and the
# staged tool bundle from the state dir, so the state dir must be at the
# same path in this container and in the engine's file system:
#   docker run -d -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /srv/stevedore-agent:/srv/stevedore-agent -e STEVEDORE_STATE_DIR=/srv/stevedore-agent \
#     -e STEVEDORE_REGISTRATION_TOKEN=… stevedore-agent:dev \
#     --server ci.internal:10943 --server-thumbprint T --register http://ci.internal:8080 --pool linux
# `docker exec CONTAINER stevedore agent drain` (a pod's preStop) drains it.
#
# tini is PID 1: it passes SIGTERM and SIGQUIT (the drain) to the agent and
# reaps what host steps leave behind (no --init needed).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# First, so that a rebuild with a new binary reuses this layer.
# ca-certificates: the agent asks registries itself (tenant checks, the
# classification of a refused pull).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
COPY bin/stevedore /usr/local/bin/stevedore
COPY bin/bundle/ /usr/local/bin/bundle/
ENV STEVEDORE_STATE_DIR=/var/lib/stevedore
VOLUME ["/var/lib/stevedore"]
EXPOSE 10933
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/stevedore", "agent"]
