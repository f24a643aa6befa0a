{{/* One Deployment of a hotdeal process (legacy, order-redis, writer):
     hotdeal.deployment (dict "root" $ "component" "legacy" "values" .Values.legacy
       "image" .Values.legacy.image "env" (list ...) "command" (list ...) "port" 8080
       "probe" "http" | "metrics" "database" true "redis" false ["volumes" (list ...)
       "mounts" (list ...)]): database and redis name the stores the process uses; it
     gets the Secret, URL and NetworkPolicy label of those only. */}}
{{- define "hotdeal.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $stores := dict "root" $root "database" .database "redis" .redis -}}
{{- $dbOnly := dict "root" $root "database" true "redis" false -}}
{{- $front := and (eq .probe "http") $root.Values.front.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "hotdeal.component" $ctx }}
  labels:
    {{- include "hotdeal.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and (eq .component "order-redis") $v.hpa.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "hotdeal.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "hotdeal.labels" $ctx | nindent 8 }}
        {{- include "hotdeal.clientLabels" $stores | nindent 8 }}
      annotations:
        {{- /* Values the pod uses are in its spec already (a change rolls it); scaling
             must not. What is outside the spec is the chart's own Secrets: a changed
             password rolls the pods that read it (existingSecret: see the README). */}}
        checksum/secrets: {{ include "hotdeal.secretsChecksum" $root | quote }}
        {{- if $front }}
        checksum/front: {{ include "hotdeal.frontConf" $ctx | sha256sum | quote }}
        {{- end }}
    spec:
      automountServiceAccountToken: false
      {{- include "hotdeal.pullSecrets" $root | nindent 6 }}
      {{- include "hotdeal.podSecurity" $root | nindent 6 }}
      terminationGracePeriodSeconds: 40
      {{- if and .database $root.Values.database.initSchema.enabled }}
      # The tables exist before the process starts, and readiness never waits for a
      # Helm hook: a post-install hook runs only after `helm install --wait` (and Argo
      # CD, Flux) saw the pods Ready, which they can't be without the tables. init-db
      # is idempotent and safe from several pods at once; it waits for the database
      # (and retries ORA-01017 while gvenzl's entrypoint still creates the user).
      initContainers:
        - name: init-db
          image: {{ include "hotdeal.image" (dict "root" $root "image" $root.Values.orderRedis.image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["hotdeal-ops", "init-db", "--wait", {{ $root.Values.database.initSchema.waitSeconds | toString | quote }}]
          env:
            {{- include "hotdeal.connectionEnv" $dbOnly | nindent 12 }}
          {{- include "hotdeal.containerSecurity" $root | nindent 10 }}
          resources:
            {{- toYaml $root.Values.ops.resources | nindent 12 }}
          volumeMounts:
            {{- include "hotdeal.secretMounts" $dbOnly | nindent 12 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "hotdeal.image" (dict "root" $root "image" .image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- with .command }}
          command: {{ toJson . }}
          {{- end }}
          env:
            {{- include "hotdeal.connectionEnv" $stores | nindent 12 }}
            {{- if $front }}
            # Only the front reaches the workers; the admin port stays on the pod's IP.
            - {name: HOTDEAL_BIND, value: "127.0.0.1:{{ include "hotdeal.behindFrontPort" . }}"}
            # The front is the only way in: its X-Hotdeal-Arrived can be trusted.
            - {name: HOTDEAL_ROOM_FRONT_ARRIVAL, value: "true"}
            {{- end }}
            {{- if eq .probe "http" }}
            {{- include "hotdeal.authEnv" $root | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            {{- if not $front }}
            - name: {{ if eq .probe "http" }}http{{ else }}metrics{{ end }}
              containerPort: {{ .port }}
              protocol: TCP
            {{- end }}
            {{- if eq .probe "http" }}
            # Probes and scrapes: hotdeal.admin, beside gunicorn's arbiter, never behind
            # orders queued in the workers (legacy's hot row kept /healthz waiting 2.5 s).
            - name: admin
              containerPort: 9000
              protocol: TCP
            {{- end }}
          {{- if eq .probe "http" }}
          startupProbe:
            httpGet: {path: /healthz, port: admin}
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /healthz, port: admin}
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /readyz, port: admin}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          {{- else }}
          # /healthz reads no store (/metrics does): a slow store must not restart it.
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 15
            timeoutSeconds: 5
          {{- end }}
          {{- if $front }}
          lifecycle:
            # Stop taking requests only after the front has drained (its preStop).
            preStop:
              exec:
                command: ["sleep", "6"]
          {{- end }}
          {{- include "hotdeal.containerSecurity" $root | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            {{- include "hotdeal.secretMounts" $stores | nindent 12 }}
            {{- if eq .probe "http" }}
            {{- include "hotdeal.authMount" $root | nindent 12 }}
            {{- end }}
            {{- with .mounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
        {{- if $front }}
        # Buyers reach the front (nginx), which hands gunicorn only whole requests.
        - name: front
          image: {{ include "hotdeal.thirdPartyImage" (dict "root" $root "image" $root.Values.front.image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          # Not the image's entrypoint: it would rewrite files under /etc/nginx.
          command: ["nginx", "-c", "/etc/hotdeal/{{ .component }}.conf", "-e", "stderr", "-g", "daemon off;"]
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
          readinessProbe:
            tcpSocket: {port: http}
            periodSeconds: 5
          livenessProbe:
            tcpSocket: {port: http}
            periodSeconds: 10
          lifecycle:
            # Drain: Endpoints drop the pod while the front still forwards (5 s), then
            # it finishes what it holds (SIGTERM would drop it: nginx's fast shutdown).
            preStop:
              exec:
                command: ["/bin/sh", "-c", "sleep 5; nginx -c /etc/hotdeal/{{ .component }}.conf -s quit; while [ -e /tmp/nginx.pid ]; do sleep 0.2; done"]
          {{- include "hotdeal.containerSecurity" $root | nindent 10 }}
          resources:
            {{- toYaml $root.Values.front.resources | nindent 12 }}
          volumeMounts:
            - {name: front-conf, mountPath: /etc/hotdeal, readOnly: true}
            - {name: front-run, mountPath: /tmp}
        {{- end }}
      volumes:
        {{- include "hotdeal.secretVolumes" $stores | nindent 8 }}
        {{- if eq .probe "http" }}
        {{- include "hotdeal.authVolume" $root | nindent 8 }}
        {{- end }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if $front }}
        - name: front-conf
          configMap:
            name: {{ include "hotdeal.component" (dict "root" $root "component" "front") }}
        - name: front-run
          emptyDir: {medium: Memory, sizeLimit: 16Mi}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* The Service and PodDisruptionBudget of a component. */}}
{{- define "hotdeal.service" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "hotdeal.component" $ctx }}
  labels:
    {{- include "hotdeal.labels" $ctx | nindent 4 }}
spec:
  type: {{ .type | default "ClusterIP" }}
  selector:
    {{- include "hotdeal.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .portName }}
      protocol: TCP
    {{- if eq .portName "http" }}
    - name: admin
      port: 9000
      targetPort: admin
      protocol: TCP
    {{- end }}
{{- end -}}

{{- define "hotdeal.pdb" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "hotdeal.component" $ctx }}
  labels:
    {{- include "hotdeal.labels" $ctx | nindent 4 }}
spec:
  {{- /* maxUnavailable, not minAvailable: with one replica, minAvailable 1 would block
         every `kubectl drain` and managed node-group upgrade. */}}
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "hotdeal.selectorLabels" $ctx | nindent 6 }}
{{- end -}}
