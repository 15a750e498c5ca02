{{/*
Names are truncated to 63 characters (the DNS label and label-value limit) and trimmed of a
trailing "-", as cert-manager's chart does.
*/}}
{{- define "diffusion-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "diffusion-operator.fullname" -}}
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

{{- define "diffusion-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "diffusion-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "diffusion-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "diffusion-operator.labels" -}}
helm.sh/chart: {{ include "diffusion-operator.chart" . }}
{{ include "diffusion-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "diffusion-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "diffusion-operator.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A name with a suffix, still within 63 characters: fullname truncated to leave room. */}}
{{- define "diffusion-operator.suffixed" -}}
{{- $suffix := .suffix -}}
{{- printf "%s-%s" (include "diffusion-operator.fullname" .ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{/*
RBAC rules from files/rbac-rules.yaml (the single source, also used by the tests), split by
scope. Kopf reads a few cluster-scoped resources (CRDs for discovery, namespaces): a cluster-wide
operator gets them in its ClusterRole with everything else; a namespaced one in a small
ClusterRole, with everything else in a Role per watched namespace. The leader-election Lease
lives in the release's namespace, so leases go only into a Role there, in either mode.
  include "diffusion-operator.rules" (dict "ctx" . "scope" "all|cluster|namespaced|leader")
*/}}
{{- define "diffusion-operator.rules" -}}
{{- $file := .ctx.Files.Get "files/rbac-rules.yaml" | fromYaml -}}
{{- $all := concat ($file.framework | default list) ($file.application | default list) -}}
{{- $clusterScoped := list "customresourcedefinitions" "namespaces" -}}
{{- $leader := list "leases" -}}
{{- $out := list -}}
{{- range $rule := $all -}}
{{- $res := list -}}
{{- range $r := $rule.resources -}}
{{- $keep := false -}}
{{- if eq $.scope "leader" -}}
{{- $keep = has $r $leader -}}
{{- else if has $r $leader -}}
{{- $keep = false -}}
{{- else if eq $.scope "all" -}}
{{- $keep = true -}}
{{- else -}}
{{- $keep = eq (has $r $clusterScoped) (eq $.scope "cluster") -}}
{{- end -}}
{{- if $keep -}}
{{- $res = append $res $r -}}
{{- end -}}
{{- end -}}
{{- if $res -}}
{{- $out = append $out (dict "apiGroups" $rule.apiGroups "resources" $res "verbs" $rule.verbs) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
