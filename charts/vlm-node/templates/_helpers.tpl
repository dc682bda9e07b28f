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
{{- end }}

{{/* Restart the node's pods when their configuration changes. */}}
{{- define "vlm-node.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
