{{/* Names. */}}
{{- define "vlm-node.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vlm-node.fullname" -}}
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

{{- define "vlm-node.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels; call with (dict "root" $ "component" "server"). */}}
{{- define "vlm-node.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlm-node.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vlm-node.labels" -}}
helm.sh/chart: {{ include "vlm-node.chart" .root }}
{{ include "vlm-node.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "vlm-node.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vlm-node.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Images: the worker uses the server's image unless told otherwise. */}}
{{- define "vlm-node.serverImage" -}}
{{- printf "%s:%s" .Values.server.image.repository (.Values.server.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "vlm-node.workerImage" -}}
{{- $repo := .Values.worker.image.repository | default .Values.server.image.repository }}
{{- $tag := .Values.worker.image.tag | default .Values.server.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Secrets. */}}
{{- define "vlm-node.posemeshSecretName" -}}
{{- if .Values.security.existingSecret }}
{{- .Values.security.existingSecret }}
{{- else if .Values.security.createSecret }}
{{- printf "%s-posemesh" (include "vlm-node.fullname" .) }}
{{- end }}
{{- end }}

{{- define "vlm-node.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "vlm-node.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The password of the chart's PostgreSQL: the value, else the one already
stored (so upgrades keep it), else a new random one. */}}
{{- define "vlm-node.postgresql.password" -}}
{{- if .Values.postgresql.auth.password }}
{{- .Values.postgresql.auth.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "vlm-node.postgresql.fullname" .) }}
{{- $stored := "" }}
{{- if $existing }}
{{- $stored = index ($existing.data | default dict) "POSTGRES_PASSWORD" | default "" }}
{{- end }}
{{- if $stored }}
{{- $stored | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuses settings that cannot work, with a message saying what to set. */}}
{{- define "vlm-node.validate" -}}
{{- $pg := .Values.postgresql }}
{{- if and $pg.enabled (or $pg.url $pg.existingSecret) }}
{{- fail "postgresql: choose one database: postgresql.enabled=true (the chart's own), or postgresql.enabled=false with postgresql.url or postgresql.existingSecret" }}
{{- end }}
{{- if not (or $pg.enabled $pg.url $pg.existingSecret) }}
{{- fail "postgresql: no database: set postgresql.enabled=true, postgresql.url, or postgresql.existingSecret" }}
{{- end }}
{{- if and .Values.security.createSecret .Values.security.existingSecret }}
{{- fail "security: set either security.createSecret=true (with posemeshEmail and posemeshPassword) or security.existingSecret, not both" }}
{{- end }}
{{- if and .Values.security.createSecret (not (and .Values.security.posemeshEmail .Values.security.posemeshPassword)) }}
{{- fail "security.createSecret=true needs security.posemeshEmail and security.posemeshPassword" }}
{{- end }}
{{- $auth := .Values.auth }}
{{- if $auth.enabled }}
{{- if and $auth.createSecret $auth.existingSecret }}
{{- fail "auth: set either auth.createSecret=true (with auth.tokens) or auth.existingSecret, not both" }}
{{- end }}
{{- if not (or $auth.createSecret $auth.existingSecret) }}
{{- fail "auth.enabled=true needs the tokens: auth.existingSecret (a Secret with the key `tokens`, one token a line) or auth.createSecret=true with auth.tokens" }}
{{- end }}
{{- if and $auth.createSecret (not $auth.tokens) }}
{{- fail "auth.createSecret=true needs at least one token in auth.tokens" }}
{{- end }}
{{- else if or $auth.createSecret $auth.existingSecret $auth.tokens }}
{{- fail "auth: tokens are given but auth.enabled=false, so the node would be open; set auth.enabled=true" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled=true needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- $as := .Values.worker.autoscaling }}
{{- if and $as.enabled (eq $as.mode "prometheus") (lt (int $as.minReplicas) 1) }}
{{- fail "worker.autoscaling.mode=prometheus needs minReplicas >= 1: a HorizontalPodAutoscaler does not scale to zero (mode keda does)" }}
{{- end }}
{{- if and $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- fail "worker.autoscaling: minReplicas is above maxReplicas" }}
{{- end }}
{{- $onReleaseOllama := false }}
{{- range $role := list "vlm" "llm" }}
{{- $e := index $.Values.engines $role }}
{{- if include "vlm-node.engine.onReleaseOllama" (dict "root" $ "role" $role) }}
{{- $onReleaseOllama = true }}
{{- end }}
{{- if eq $e.backend "ollama" }}
{{- if not (kindIs "invalid" $e.slots) }}
{{- fail (printf "engines.%s.slots is what an OpenAI-compatible server answers at once; Ollama's is ollama.numParallel (OLLAMA_NUM_PARALLEL)" $role) }}
{{- end }}
{{- if or $e.apiKey.value $e.apiKey.existingSecret }}
{{- fail (printf "engines.%s.apiKey: the node sends an API key to an openai backend only" $role) }}
{{- end }}
{{- end }}
{{- $legacy := printf "%s_MODEL" (upper $role) }}
{{- if and (hasKey $.Values.env $legacy) (or (eq $e.backend "openai") $e.baseUrls) }}
{{- fail (printf "engines.%s: name the model in engines.%s.model, not env.%s (where earlier versions of the chart took it), now that engines.%s names its server" $role $role $legacy $role) }}
{{- end }}
{{- end }}
{{- if and .Values.ollama.enabled (not $onReleaseOllama) }}
{{- fail "ollama.enabled=true, but engines puts neither role on the release's Ollama: set ollama.enabled=false" }}
{{- end }}
{{- end }}

{{/* Worker autoscaling. The jobs wanting a worker: due pending ones and
those a worker holds (server/job_status.py HELD); tests/test_deploy.py checks
this counts what the node's own queries count. */}}
{{- define "vlm-node.worker.demandQuery" -}}
SELECT count(*) FROM jobs WHERE (status = 'pending' AND run_after <= now()) OR status IN ('running', 'completing', 'uploading', 'cancelling')
{{- end }}

{{/* Jobs one worker takes on: the value, else WORKER_JOBS, else the node's
default (1, checked against server/config.py by tests/test_deploy.py). */}}
{{- define "vlm-node.worker.jobsPerReplica" -}}
{{- .Values.worker.autoscaling.jobsPerReplica | default .Values.env.WORKER_JOBS | default 1 }}
{{- end }}

{{/* Bearer tokens and TLS: the files the gRPC server and the bridge read. */}}
{{- define "vlm-node.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "vlm-node.fullname" .)) }}
{{- end }}

{{- define "vlm-node.authDir" -}}/etc/vlm-node/auth{{- end }}
{{- define "vlm-node.tlsDir" -}}/etc/vlm-node/tls{{- end }}

{{/* Env items (no `env:` key) for a container that serves the API. */}}
{{- define "vlm-node.securityEnv" -}}
{{- if .Values.auth.enabled }}
- name: AUTH_TOKENS_FILE
  value: {{ printf "%s/tokens" (include "vlm-node.authDir" .) | quote }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: TLS_CERT_FILE
  value: {{ printf "%s/tls.crt" (include "vlm-node.tlsDir" .) | quote }}
- name: TLS_KEY_FILE
  value: {{ printf "%s/tls.key" (include "vlm-node.tlsDir" .) | quote }}
{{- end }}
{{- end }}

{{- define "vlm-node.securityMounts" -}}
{{- if .Values.auth.enabled }}
- name: auth-tokens
  mountPath: {{ include "vlm-node.authDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "vlm-node.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "vlm-node.securityVolumes" -}}
{{- if .Values.auth.enabled }}
- name: auth-tokens
  secret:
    secretName: {{ include "vlm-node.authSecretName" . }}
    items:
      - key: tokens
        path: tokens
    defaultMode: 288  # 0440: the pod's group (fsGroup) reads it
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 288  # 0440: the pod's group (fsGroup) reads it
{{- end }}
{{- end }}

{{/* prometheus.io/* pod annotations for one port; call with (dict "root" $ "port" N). */}}
{{- define "vlm-node.scrapeAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The release's Ollama (its Service, Deployment or StatefulSet), and the
headless Service naming each pod of several replicas. */}}
{{- define "vlm-node.ollama.fullname" -}}
{{- printf "%s-ollama" (include "vlm-node.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vlm-node.ollama.headless" -}}
{{- printf "%s-ollama-headless" (include "vlm-node.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The engines: each role's model server (VLM_*, LLM_* settings). Call
with (dict "root" $ "role" "vlm"). */}}
{{- define "vlm-node.engine.onReleaseOllama" -}}
{{- $e := index .root.Values.engines .role }}
{{- if and .root.Values.ollama.enabled (eq $e.backend "ollama") (not $e.baseUrls) }}true{{ end }}
{{- end }}

{{/* The role's servers, comma-separated; empty: OLLAMA_HOST. */}}
{{- define "vlm-node.engine.baseUrl" -}}
{{- $e := index .root.Values.engines .role }}
{{- $replicas := int .root.Values.ollama.replicas }}
{{- if $e.baseUrls }}
{{- join "," $e.baseUrls }}
{{- else if and (include "vlm-node.engine.onReleaseOllama" .) (gt $replicas 1) }}
{{- $urls := list }}
{{- range $i := until $replicas }}
{{- $urls = append $urls (printf "http://%s-%d.%s:11434" (include "vlm-node.ollama.fullname" $.root) $i (include "vlm-node.ollama.headless" $.root)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}

{{- define "vlm-node.engine.model" -}}
{{- index .root.Values.env (printf "%s_MODEL" (upper .role)) | default (index .root.Values.engines .role).model }}
{{- end }}

{{/* The Secret the chart makes of the keys given as values. */}}
{{- define "vlm-node.engineKeysSecretName" -}}
{{- printf "%s-engines" (include "vlm-node.fullname" .) }}
{{- end }}

{{/* The Secret holding the role's API key (empty: no key), and its key there. */}}
{{- define "vlm-node.engine.keySecret" -}}
{{- $key := (index .root.Values.engines .role).apiKey }}
{{- if $key.existingSecret }}
{{- $key.existingSecret }}
{{- else if $key.value }}
{{- include "vlm-node.engineKeysSecretName" .root }}
{{- end }}
{{- end }}

{{- define "vlm-node.engine.keyName" -}}
{{- $key := (index .root.Values.engines .role).apiKey }}
{{- if $key.existingSecret }}{{ $key.key }}{{ else }}{{ printf "%s-api-key" .role }}{{ end }}
{{- end }}

{{- define "vlm-node.engineKeyDir" -}}/etc/vlm-node/engines{{- end }}

{{/* Env items, mounts and volumes of the engines' API keys, for the
containers that reach the models (the gRPC server and the workers). */}}
{{- define "vlm-node.engineKeyEnv" -}}
{{- range $role := list "vlm" "llm" }}
{{- if include "vlm-node.engine.keySecret" (dict "root" $ "role" $role) }}
- name: {{ upper $role }}_API_KEY_FILE
  value: {{ printf "%s/%s/api-key" (include "vlm-node.engineKeyDir" $) $role | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vlm-node.engineKeyMounts" -}}
{{- range $role := list "vlm" "llm" }}
{{- if include "vlm-node.engine.keySecret" (dict "root" $ "role" $role) }}
- name: {{ $role }}-api-key
  mountPath: {{ printf "%s/%s" (include "vlm-node.engineKeyDir" $) $role }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "vlm-node.engineKeyVolumes" -}}
{{- range $role := list "vlm" "llm" }}
{{- $ctx := dict "root" $ "role" $role }}
{{- with include "vlm-node.engine.keySecret" $ctx }}
- name: {{ $role }}-api-key
  secret:
    secretName: {{ . }}
    items:
      - key: {{ include "vlm-node.engine.keyName" $ctx }}
        path: api-key
    defaultMode: 288  # 0440: the pod's group (fsGroup) reads it
{{- end }}
{{- end }}
{{- end }}

{{/* Environment of the node's server and worker containers. */}}
{{- define "vlm-node.nodeEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "vlm-node.fullname" . }}
env:
  {{- if .Values.postgresql.enabled }}
  # POSTGRES_URL (in the ConfigMap) names no password; libpq reads PGPASSWORD.
  - name: PGPASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "vlm-node.postgresql.fullname" . }}
        key: POSTGRES_PASSWORD
  {{- else }}
  - name: POSTGRES_URL
    valueFrom:
      secretKeyRef:
        {{- if .Values.postgresql.existingSecret }}
        name: {{ .Values.postgresql.existingSecret }}
        key: {{ .Values.postgresql.existingSecretKey }}
        {{- else }}
        name: {{ include "vlm-node.fullname" . }}-database
        key: POSTGRES_URL
        {{- end }}
  {{- end }}
  {{- with include "vlm-node.posemeshSecretName" . }}
  - name: POSEMESH_EMAIL
    valueFrom:
      secretKeyRef: {name: {{ . }}, key: POSEMESH_EMAIL}
  - name: POSEMESH_PASSWORD
    valueFrom:
      secretKeyRef: {name: {{ . }}, key: POSEMESH_PASSWORD}
  - name: WEBHOOK_SECRET
    valueFrom:
      secretKeyRef: {name: {{ . }}, key: WEBHOOK_SECRET, optional: true}
  {{- end }}
  {{- with include "vlm-node.engineKeyEnv" . | trim }}{{ . | nindent 2 }}{{ end }}
{{- end }}

{{/* Restart the node's pods when their configuration changes. */}}
{{- define "vlm-node.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/* Ollama's models volume: the PVC's spec, or each replica's. */}}
{{- define "vlm-node.ollama.volumeSpec" -}}
accessModes: [ReadWriteOnce]
{{- with .Values.ollama.persistence.storageClass }}
storageClassName: {{ . }}
{{- end }}
resources:
  requests:
    storage: {{ .Values.ollama.persistence.size }}
{{- end }}

{{/* Ollama's pod template; call with (dict "root" $ "claim" NAME), NAME the
PVC of the models, or "" where a StatefulSet gives each pod its own. */}}
{{- define "vlm-node.ollama.pod" -}}
{{- with .root -}}
metadata:
  labels:
    {{- include "vlm-node.labels" (dict "root" . "component" "ollama") | nindent 4 }}
spec:
  automountServiceAccountToken: false
  containers:
    - name: ollama
      image: "{{ .Values.ollama.image.repository }}:{{ .Values.ollama.image.tag }}"
      imagePullPolicy: {{ .Values.ollama.image.pullPolicy }}
      env:
        - name: OLLAMA_HOST
          value: "0.0.0.0:11434"
        - name: OLLAMA_NUM_PARALLEL
          value: {{ .Values.ollama.numParallel | quote }}
      ports:
        - name: http
          containerPort: 11434
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /
          port: http
        initialDelaySeconds: 10
        periodSeconds: 15
        timeoutSeconds: 5
      readinessProbe:
        httpGet:
          path: /api/version
          port: http
        periodSeconds: 10
        timeoutSeconds: 5
      resources:
        {{- $resources := deepCopy .Values.ollama.resources }}
        {{- if .Values.ollama.gpu.enabled }}
        {{- $limits := default dict $resources.limits }}
        {{- $_ := set $limits "nvidia.com/gpu" .Values.ollama.gpu.count }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: /root/.ollama
  {{- with $.claim }}
  volumes:
    - name: models
      persistentVolumeClaim:
        claimName: {{ . }}
  {{- end }}
  {{- with .Values.ollama.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.ollama.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.ollama.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
