{{/* Names, labels and the few values computed in one place. */}}

{{- define "reranker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reranker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "reranker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "reranker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reranker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* selector labels of one component: include "reranker.selector" (list . "gateway") */}}
{{- define "reranker.selector" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "reranker.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "reranker.gateway.name" -}}
{{- printf "%s-gateway" (include "reranker.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reranker.triton.name" -}}
{{- printf "%s-triton" (include "reranker.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The headless Service: its DNS name resolves to every ready Triton pod (the gateways balance over them). */}}
{{- define "reranker.triton.headless" -}}
{{- printf "%s-triton-headless" (include "reranker.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reranker.claimName" -}}
{{- default (printf "%s-models" (include "reranker.fullname" .)) .Values.modelRepository.pvc.existingClaim -}}
{{- end -}}

{{- define "reranker.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "reranker.fullname" .)) .Values.gateway.apiKeys.existingSecret -}}
{{- end -}}

{{- define "reranker.image" -}}
{{- $image := index . 0 -}}
{{- printf "%s:%s" $image.repository (default (index . 1).Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* Where the repository volume is mounted, and the repository inside it. */}}
{{- define "reranker.volumeMount" -}}/repository{{- end -}}
{{- define "reranker.repositoryDir" -}}
{{- printf "/repository/%s" (trimAll "/" .Values.modelRepository.path) -}}
{{- end -}}

{{- define "reranker.checkValues" -}}
{{- $source := .Values.modelRepository.source -}}
{{- if not (has $source (list "pvc" "objectStore")) -}}
{{- fail (printf "modelRepository.source must be pvc or objectStore, got %q" $source) -}}
{{- end -}}
{{- if and (eq $source "objectStore") (not .Values.modelRepository.objectStore.url) -}}
{{- fail "modelRepository.source=objectStore needs modelRepository.objectStore.url (s3://, gs:// or as://)" -}}
{{- end -}}
{{- if and .Values.exportJob.enabled (ne $source "pvc") -}}
{{- fail "exportJob writes into the PVC: it needs modelRepository.source=pvc" -}}
{{- end -}}
{{- if not (has .Values.triton.mode (list "gpu" "cpu")) -}}
{{- fail (printf "triton.mode must be gpu or cpu, got %q" .Values.triton.mode) -}}
{{- end -}}
{{- range $name := list "model_repository" "host" "port" "triton_url" "api_keys" "models_file" -}}
{{- if hasKey $.Values.gateway.settings $name -}}
{{- fail (printf "gateway.settings.%s is set by the chart; remove it" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment string: whole numbers without an exponent (values arrive as float64). */}}
{{- define "reranker.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else if kindIs "slice" . -}}
{{- join "," . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* With the export Job on: an init container (in the pod's own image) that waits for the exported model. */}}
{{- define "reranker.waitForModels" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.exportJob.enabled }}
- name: wait-for-models
  image: {{ index . 1 }}
  command: ["sh", "-c", "until [ -f \"$MODEL_DIR/config.pbtxt\" ] && [ -f \"$MODEL_DIR/manifest.json\" ]; do echo waiting for $MODEL_DIR; sleep 10; done"]
  env:
    - name: MODEL_DIR
      value: {{ printf "%s/%s" (include "reranker.repositoryDir" $ctx) (default "reranker" $ctx.Values.gateway.settings.model_name) | quote }}
  securityContext:
    {{- toYaml (index . 2) | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - name: repository
      mountPath: {{ include "reranker.volumeMount" $ctx }}
      readOnly: true
{{- end }}
{{- end -}}

{{- define "reranker.modelsFileConfigMap" -}}
{{- printf "%s-models-file" (include "reranker.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
