{{/*
Names.  Object names are truncated to 63 characters (DNS label limit).
*/}}
{{- define "ollama-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ollama-fleet.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>, e.g. "x-ollama-fleet-balancer". */}}
{{- define "ollama-fleet.componentName" -}}
{{- printf "%s-%s" (include "ollama-fleet.fullname" .ctx | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "ollama-fleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the few labels Deployments, Services and policies select on.  They must
never change between upgrades (a Deployment's selector is immutable), so nothing that
varies per version (chart version, app version, commonLabels) goes here.
Call with (dict "ctx" $ "component" "balancer").
*/}}
{{- define "ollama-fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ollama-fleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Ollama pods are labelled app.kubernetes.io/name=ollama (what the balancer's default
selector and the example ModelPools pick), plus this release's instance label.
*/}}
{{- define "ollama-fleet.ollamaSelectorLabels" -}}
app.kubernetes.io/name: ollama
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels: selector labels plus descriptive ones.  Call like selectorLabels. */}}
{{- define "ollama-fleet.labels" -}}
helm.sh/chart: {{ include "ollama-fleet.chart" .ctx }}
{{ include "ollama-fleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ollama-fleet
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ollama-fleet.ollamaLabels" -}}
helm.sh/chart: {{ include "ollama-fleet.chart" . }}
{{ include "ollama-fleet.ollamaSelectorLabels" . }}
app.kubernetes.io/component: ollama
app.kubernetes.io/version: {{ .Values.ollama.image.tag | quote }}
app.kubernetes.io/part-of: ollama-fleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ollama-fleet image reference. */}}
{{- define "ollama-fleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ollama-fleet.balancerServiceAccount" -}}
{{- include "ollama-fleet.componentName" (dict "ctx" . "component" "balancer") }}
{{- end }}

{{- define "ollama-fleet.operatorServiceAccount" -}}
{{- include "ollama-fleet.componentName" (dict "ctx" . "component" "operator") }}
{{- end }}

{{/* Secret with the balancer's API keys file: the user's, or the one made from auth.keys. */}}
{{- define "ollama-fleet.authSecretName" -}}
{{- .Values.balancer.auth.existingSecret | default (include "ollama-fleet.componentName" (dict "ctx" . "component" "api-keys")) }}
{{- end }}

{{/* Headless Service of the Ollama StatefulSet. */}}
{{/*
The balancer ops Service whose Endpoints the operator polls for demand, NAMESPACE/NAME;
empty when operator.demand is off or there is no balancer to ask.
*/}}
{{- define "ollama-fleet.demandService" -}}
{{- $d := .Values.operator.demand }}
{{- if and .Values.operator.enabled $d.enabled }}
{{- if $d.service }}
{{- if contains "/" $d.service }}{{ $d.service }}{{ else }}{{ printf "%s/%s" .Release.Namespace $d.service }}{{ end }}
{{- else if .Values.balancer.enabled }}
{{- printf "%s/%s" .Release.Namespace (include "ollama-fleet.componentName" (dict "ctx" . "component" "balancer-ops")) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ollama-fleet.ollamaName" -}}
{{- include "ollama-fleet.componentName" (dict "ctx" . "component" "ollama") }}
{{- end }}

{{/*
How the balancer discovers backends: "kubernetes", "dns" or "static".  With the chart's
own Ollama StatefulSet it is always kubernetes (pods by label, Ready only).
*/}}
{{- define "ollama-fleet.discovery" -}}
{{- if .Values.ollama.enabled }}kubernetes{{ else }}{{ .Values.existingFleet.discovery }}{{ end }}
{{- end }}

{{/* Label selector string of the Ollama pods the balancer routes to. */}}
{{- define "ollama-fleet.kubeSelector" -}}
{{- if .Values.ollama.enabled }}
{{- printf "app.kubernetes.io/name=ollama,app.kubernetes.io/instance=%s" .Release.Name }}
{{- else }}
{{- .Values.existingFleet.selector }}
{{- end }}
{{- end }}

{{/* Namespaces (list) whose pods the balancer watches; empty list = release namespace. */}}
{{- define "ollama-fleet.balancerNamespaces" -}}
{{- if .Values.ollama.enabled }}
{{- list .Release.Namespace | toJson }}
{{- else if .Values.existingFleet.namespaces }}
{{- .Values.existingFleet.namespaces | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Namespaces (list) the operator watches. */}}
{{- define "ollama-fleet.operatorNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- .Values.operator.watchNamespaces | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Parallel slots per Ollama pod, as the balancer should assume them. */}}
{{- define "ollama-fleet.slots" -}}
{{- if .Values.ollama.enabled }}{{ .Values.ollama.numParallel }}{{ else }}{{ .Values.existingFleet.numParallel }}{{ end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express clearly. */}}
{{- define "ollama-fleet.validate" -}}
{{- if and (not .Values.ollama.enabled) .Values.balancer.enabled }}
{{- $d := .Values.existingFleet.discovery }}
{{- if and (eq $d "dns") (not .Values.existingFleet.dnsName) }}
{{- fail "existingFleet.dnsName is required when existingFleet.discovery=dns" }}
{{- end }}
{{- if and (eq $d "static") (not .Values.existingFleet.backends) }}
{{- fail "existingFleet.backends is required when existingFleet.discovery=static" }}
{{- end }}
{{- if and (eq $d "kubernetes") (not .Values.existingFleet.selector) }}
{{- fail "existingFleet.selector is required when existingFleet.discovery=kubernetes" }}
{{- end }}
{{- end }}
{{- if eq (int .Values.balancer.opsPort) 11434 }}
{{- fail "balancer.opsPort must differ from the model API port 11434" }}
{{- end }}
{{- if eq (int .Values.operator.metricsPort) 8080 }}
{{- fail "operator.metricsPort must differ from the operator's liveness port 8080" }}
{{- end }}
{{- if and .Values.operator.serviceMonitor.enabled (not (int .Values.operator.metricsPort)) }}
{{- fail "operator.serviceMonitor.enabled needs operator.metricsPort (not 0)" }}
{{- end }}
{{- if and .Values.balancer.autoscaling.enabled (gt (int .Values.balancer.autoscaling.minReplicas) (int .Values.balancer.autoscaling.maxReplicas)) }}
{{- fail "balancer.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- $keda := .Values.ollama.autoscaling.keda }}
{{- if $keda.enabled }}
{{- if not .Values.ollama.enabled }}
{{- fail "ollama.autoscaling.keda scales the chart's Ollama StatefulSet: it needs ollama.enabled=true" }}
{{- end }}
{{- if not $keda.prometheusServerAddress }}
{{- fail "ollama.autoscaling.keda.enabled needs ollama.autoscaling.keda.prometheusServerAddress (the Prometheus that scrapes the balancer)" }}
{{- end }}
{{- if gt (int $keda.minReplicas) (int $keda.maxReplicas) }}
{{- fail "ollama.autoscaling.keda.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- end }}
{{- if and .Values.operator.enabled (gt (int .Values.operator.replicas) 1) }}
{{- if not .Values.operator.leaderElection.enabled }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true (else two operators act at once)" }}
{{- end }}
{{- end }}
{{- $auth := .Values.balancer.auth }}
{{- if $auth.enabled }}
{{- if and $auth.existingSecret $auth.keys }}
{{- fail "balancer.auth: set either existingSecret or keys, not both" }}
{{- end }}
{{- if not (or $auth.existingSecret $auth.keys) }}
{{- fail "balancer.auth.enabled=true needs balancer.auth.existingSecret (a Secret with the keys file) or balancer.auth.keys" }}
{{- end }}
{{- /* What the balancer's parser (ollama_balancer.auth.parse_keys) would refuse at start. */}}
{{- $names := dict }}
{{- $hashes := dict }}
{{- range $i, $k := $auth.keys }}
{{- $name := trim (toString $k.name) }}
{{- if hasKey $names $name }}
{{- fail (printf "balancer.auth.keys[%d] (%s): the name appears twice" $i $name) }}
{{- end }}
{{- $_ := set $names $name true }}
{{- $hash := lower (toString $k.key_sha256) | trimPrefix "sha256:" }}
{{- if hasKey $hashes $hash }}
{{- fail (printf "balancer.auth.keys[%d] (%s): the same key_sha256 appears twice" $i $name) }}
{{- end }}
{{- $_ := set $hashes $hash true }}
{{- end }}
{{- end }}
{{- $shared := .Values.sharedState }}
{{- if eq $shared.mode "external" }}
{{- if regexMatch "^rediss?(\\+sentinel)?://[^/@]*:[^/@]*@" $shared.external.url }}
{{- fail "sharedState.external.url: put the password in a Secret (sharedState.external.existingSecret), not in the URL" }}
{{- end }}
{{- if and $shared.external.tls.caSecret (not (regexMatch "^rediss(\\+sentinel)?://" $shared.external.url)) }}
{{- fail "sharedState.external.tls.caSecret needs a rediss:// or rediss+sentinel:// URL (TLS)" }}
{{- end }}
{{- if and $shared.external.sentinel.existingSecret (not (regexMatch "^rediss?\\+sentinel://" $shared.external.url)) }}
{{- fail "sharedState.external.sentinel.existingSecret needs a redis+sentinel:// or rediss+sentinel:// URL" }}
{{- end }}
{{- end }}
{{- end }}

{{/* RBAC rules of the operator (see operator-rbac.yaml). */}}
{{- define "ollama-fleet.operatorRules" -}}
rules:
  # ModelPools: watch them; patch adds/removes the finalizer of prune: true pools
  - apiGroups: [ollamafleet.io]
    resources: [modelpools]
    verbs: [get, list, watch, patch]
  # ModelPool status: conditions, per-model pods, loaded/ready counts
  - apiGroups: [ollamafleet.io]
    resources: [modelpools/status]
    verbs: [get, patch]
  # Ollama pods: which pods a pool selects, their IPs, readiness and VRAM annotation
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch]
  # Events on ModelPools (kubectl describe mp); a repeat bumps the same Event's count
  - apiGroups: [""]
    resources: [events]
    verbs: [create, get, patch]
{{- end }}

{{/*
Scheduling extras shared by the balancer, operator and Ollama pods: priorityClassName and
topologySpreadConstraints (a constraint without a labelSelector spreads the pods of its own
workload).  Call with (dict "values" .Values.balancer "selector" (selector labels as a dict)).
*/}}
{{- define "ollama-fleet.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
{{- $constraints := list }}
{{- range .values.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not $c.labelSelector }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $.selector) }}
{{- end }}
{{- $constraints = append $constraints $c }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $constraints | nindent 2 }}
{{- end }}
{{- end }}

{{/* GPU extended resource name of the Ollama pods: the one given, else the vendor's. */}}
{{- define "ollama-fleet.gpuResource" -}}
{{- $g := .Values.ollama.gpu }}
{{- if $g.resourceName }}{{ $g.resourceName }}{{ else if eq $g.vendor "amd" }}amd.com/gpu{{ else }}nvidia.com/gpu{{ end }}
{{- end }}

{{/* The Ollama image: with gpu.vendor=amd, Ollama's ROCm build ("<tag>-rocm"). */}}
{{- define "ollama-fleet.ollamaImage" -}}
{{- $o := .Values.ollama }}
{{- $tag := toString $o.image.tag }}
{{- if and (eq $o.gpu.vendor "amd") (not (hasSuffix "-rocm" $tag)) }}
{{- $tag = printf "%s-rocm" $tag }}
{{- end }}
{{- printf "%s:%s" $o.image.repository $tag }}
{{- end }}

{{/* The bundled store's Deployment and Service. */}}
{{- define "ollama-fleet.sharedStateName" -}}
{{- include "ollama-fleet.componentName" (dict "ctx" . "component" "shared-state") }}
{{- end }}

{{/* Secret with the shared store's password: the generated one, or the user's. */}}
{{- define "ollama-fleet.sharedStateSecretName" -}}
{{- if eq .Values.sharedState.mode "external" }}
{{- .Values.sharedState.external.existingSecret }}
{{- else }}
{{- include "ollama-fleet.componentName" (dict "ctx" . "component" "shared-state") }}
{{- end }}
{{- end }}

{{/* OLLAMA_FLEET_SHARED_STATE: the store's URL (never with a password). */}}
{{- define "ollama-fleet.sharedStateUrl" -}}
{{- if eq .Values.sharedState.mode "bundled" }}
{{- printf "redis://%s.%s.svc:6379/0" (include "ollama-fleet.sharedStateName" .) .Release.Namespace }}
{{- else if eq .Values.sharedState.mode "external" }}
{{- .Values.sharedState.external.url }}
{{- end }}
{{- end }}

{{/* Whether the balancer reads a password file / a CA file for the shared store. */}}
{{- define "ollama-fleet.sharedStatePassword" -}}
{{- if or (eq .Values.sharedState.mode "bundled") (and (eq .Values.sharedState.mode "external") .Values.sharedState.external.existingSecret) }}true{{ end }}
{{- end }}

{{- define "ollama-fleet.sharedStateSentinelPassword" -}}
{{- if and (eq .Values.sharedState.mode "external") .Values.sharedState.external.sentinel.existingSecret }}true{{ end }}
{{- end }}

{{- define "ollama-fleet.sharedStateCA" -}}
{{- if and (eq .Values.sharedState.mode "external") .Values.sharedState.external.tls.caSecret }}true{{ end }}
{{- end }}

{{/*
OpenTelemetry's OTEL_* variables for one component (tracing.*), read by the SDK itself.
Call with (dict "root" $ "service" "<service.name default>" "name" .Values.tracing.<x>ServiceName).
*/}}
{{- define "ollama-fleet.otelEnv" -}}
{{- $t := .root.Values.tracing -}}
{{- if and $t.enabled $t.endpoint }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .name | default .service | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.version=%s%s" (.root.Values.image.tag | default .root.Chart.AppVersion) (ternary (printf ",%s" $t.resourceAttributes) "" (ne $t.resourceAttributes "")) | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- with $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with $t.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $t.headersSecret.key | quote }}}
{{- end }}
{{- end }}
{{- end }}

{{/*
The balancer's settings file: the scheduler block as settings keys, then balancer.config over it.
*/}}
{{- define "ollama-fleet.balancerConfig" -}}
{{- $s := .Values.balancer.scheduler -}}
{{- $cfg := dict "queue" $s.enabled "queue_policy" $s.policy "queue_max_preemptions" $s.maxPreemptions -}}
{{- $names := dict "share" "share" "lendable" "lendable" "borrow" "borrow" "budget" "budget" "maxWait" "max_wait" -}}
{{- range $cls := list "critical" "standard" "batch" -}}
{{- $spec := index ($s.classes | default dict) $cls | default dict -}}
{{- if $spec -}}
{{- $parts := list -}}
{{- range $field := list "share" "lendable" "borrow" "budget" "maxWait" -}}
{{- if hasKey $spec $field -}}
{{- $parts = append $parts (printf "%s=%v" (index $names $field) (index $spec $field)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg (printf "queue_%s" $cls) (join "," $parts) -}}
{{- end -}}
{{- end -}}
{{- toYaml (mergeOverwrite $cfg (.Values.balancer.config | default dict)) -}}
{{- end -}}
