{{/* Names and labels shared by every template. */}}

{{- define "kubegate.name" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; pass (dict "root" $ "component" "gateway"). */}}
{{- define "kubegate.labels" -}}
{{ include "kubegate.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubegate
{{- end -}}

{{/* The subset that selects a component's pods: never change it on upgrade (selectors are immutable). */}}
{{- define "kubegate.selector" -}}
app.kubernetes.io/name: kubegate
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image of a mode; pass (dict "root" $ "mode" "gateway"). */}}
{{- define "kubegate.image" -}}
{{- $mode := index .root.Values.modes .mode -}}
{{- printf "%s:%s%s" .root.Values.image.repository (default .root.Chart.AppVersion .root.Values.image.tag) $mode.imageSuffix -}}
{{- end -}}

{{/* Where the pools ConfigMap is mounted; --pools reads the file in it. */}}
{{- define "kubegate.poolsDir" -}}/etc/kubegate{{- end -}}
