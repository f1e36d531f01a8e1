{{/* Names, labels, images and Secrets, shared by the templates. */}}

{{- define "stevedore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stevedore.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stevedore.server.fullname" -}}
{{- printf "%s-server" (include "stevedore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stevedore.pool.fullname" -}}
{{- printf "%s-pool" (include "stevedore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stevedore.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "stevedore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (list . "server") */}}
{{- define "stevedore.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "stevedore.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* An image reference: (list . .Values.server.image) */}}
{{- define "stevedore.image" -}}
{{- $ := index . 0 }}
{{- $img := index . 1 }}
{{- $ref := printf "%s:%s" $img.repository (default $.Chart.AppVersion $img.tag) }}
{{- if $.Values.imageRegistry }}
{{- printf "%s/%s" (trimSuffix "/" $.Values.imageRegistry) $ref }}
{{- else }}
{{- $ref }}
{{- end }}
{{- end }}

{{/* The engine sidecar's image: its own, else the server's. */}}
{{- define "stevedore.dindImage" -}}
{{- $d := .Values.workerPool.engine.dind.image }}
{{- if $d.repository }}
{{- include "stevedore.image" (list . $d) }}
{{- else }}
{{- include "stevedore.image" (list . (dict "repository" .Values.server.image.repository "tag" (default .Values.server.image.tag $d.tag))) }}
{{- end }}
{{- end }}

{{/* The Secret the chart makes for values given inline or generated. */}}
{{- define "stevedore.secretName" -}}
{{- printf "%s-secrets" (include "stevedore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The master key's Secret is apart: it is kept after helm uninstall. */}}
{{- define "stevedore.masterKeySecretName" -}}
{{- printf "%s-master-key" (include "stevedore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stevedore.registrationEnabled" -}}
{{- if or .Values.workerPool.enabled .Values.server.registrationToken.enabled }}true{{ end }}
{{- end }}

{{/*
An env entry from a Secret: (list NAME existingSecret key chartSecret chartKey).
An existing Secret wins; else the chart's, under chartKey.
*/}}
{{- define "stevedore.secretEnv" -}}
{{- $name := index . 0 }}
{{- $existing := index . 1 -}}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      {{- if $existing }}
      name: {{ $existing }}
      key: {{ index . 2 }}
      {{- else }}
      name: {{ index . 3 }}
      key: {{ index . 4 }}
      {{- end }}
{{- end }}

{{/*
A value kept across upgrades: the one in the chart's Secret in the cluster
(lookup; nothing under helm template), else given, else generated.
(list . secretName key given generated)
*/}}
{{- define "stevedore.keptValue" -}}
{{- $ := index . 0 }}
{{- $given := index . 3 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $old := lookup "v1" "Secret" $.Release.Namespace (index . 1) }}
{{- if and $old $old.data (hasKey $old.data (index . 2)) }}
{{- index $old.data (index . 2) | b64dec }}
{{- else }}
{{- index . 4 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The server's polling address and API, as the pool dials them. */}}
{{- define "stevedore.pool.serverAddress" -}}
{{- default (printf "%s:%v" (include "stevedore.server.fullname" .) .Values.server.service.pollingPort) .Values.workerPool.serverAddress }}
{{- end }}

{{- define "stevedore.pool.registerURL" -}}
{{- $scheme := ternary "https" "http" .Values.server.httpTLS }}
{{- default (printf "%s://%s:%v" $scheme (include "stevedore.server.fullname" .) .Values.server.service.httpPort) .Values.workerPool.registerURL }}
{{- end }}

{{/* Refuses value sets that cannot work, saying what to set. */}}
{{- define "stevedore.validate" -}}
{{- $s := .Values.server }}
{{- $p := .Values.workerPool }}
{{- if not (has $p.engine.mode (list "dind" "host")) }}
{{- fail (printf "workerPool.engine.mode %q: want \"dind\" (a Docker in Docker sidecar) or \"host\" (the node's engine socket)" (toString $p.engine.mode)) }}
{{- end }}
{{- if not (has $s.builtinWorker.engine (list "dind" "none")) }}
{{- fail (printf "server.builtinWorker.engine %q: want \"dind\" (an engine in the server's container, privileged) or \"none\" (host steps only)" (toString $s.builtinWorker.engine)) }}
{{- end }}
{{- if and $s.enabled (gt (int $s.replicas) 1) }}
{{- if not (or $s.database.existingSecret $s.database.connectionString) }}
{{- fail "server.replicas > 1 needs server.database (existingSecret or connectionString): the replicas share one database, and bbolt in a data dir serves one server" }}
{{- end }}
{{- if not $s.identity.existingSecret }}
{{- fail "server.replicas > 1 needs server.identity.existingSecret: every replica must present the one identity agents pin (make it with `stevedore cert --state-dir DIR`; see values.yaml)" }}
{{- end }}
{{- if and $s.persistence.enabled (not $s.persistence.existingClaim) (not (has "ReadWriteMany" $s.persistence.accessModes)) }}
{{- fail "server.replicas > 1 with persistence needs server.persistence.accessModes [ReadWriteMany] (or an existingClaim that is): the replicas share task logs and artifacts" }}
{{- end }}
{{- if and $s.builtinWorker.enabled $s.persistence.enabled }}
{{- fail "server.builtinWorker with server.replicas > 1 and a shared data dir: each replica's built-in worker would use the same state dir (DATA_DIR/builtin-worker); use the worker pool" }}
{{- end }}
{{- end }}
{{- if $p.enabled }}
{{- if not (regexMatch "^[0-9a-fA-F]{64}$" (toString $s.thumbprint)) }}
{{- fail "workerPool needs server.thumbprint, the 64 hex characters of the server identity's thumbprint, which the agents pin: make the identity with `stevedore cert --state-dir DIR` (it prints the thumbprint) and give it as server.identity.existingSecret (see values.yaml)" }}
{{- end }}
{{- if and $s.enabled (not $s.identity.existingSecret) }}
{{- fail "workerPool with this chart's server needs server.identity.existingSecret: the identity whose thumbprint is server.thumbprint; otherwise the server makes a new one that no agent pins" }}
{{- end }}
{{- if and (not $s.enabled) (not (and $p.serverAddress $p.registerURL)) }}
{{- fail "workerPool without this chart's server needs workerPool.serverAddress (host:10943) and workerPool.registerURL (http(s)://host:8080)" }}
{{- end }}
{{- if and (not $s.enabled) (not (or $s.registrationToken.existingSecret $s.registrationToken.value)) }}
{{- fail "workerPool without this chart's server needs the server's registration token: server.registrationToken.existingSecret or .value (a generated one would match no server)" }}
{{- end }}
{{- if not $p.pools }}
{{- fail "workerPool.pools: name at least one pool, which steps are submitted to" }}
{{- end }}
{{- end }}
{{- end }}
