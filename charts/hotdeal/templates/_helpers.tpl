{{/* Names, labels, images and the shared pod plumbing of the hotdeal chart. */}}

{{- define "hotdeal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hotdeal.fullname" -}}
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

{{/* Name of one component's objects: hotdeal.component (dict "root" $ "component" "legacy") */}}
{{- define "hotdeal.component" -}}
{{- printf "%s-%s" (include "hotdeal.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hotdeal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hotdeal.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hotdeal.labels" -}}
{{ include "hotdeal.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: hotdeal
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Contradictory switches fail the render with a message (Bitnami's validateValues). */}}
{{- define "hotdeal.validateValues" -}}
{{- $errors := list -}}
{{- if and .Values.orderRedis.enabled (eq .Values.orderRedis.orderWrite "stream") (not .Values.writer.enabled) -}}
{{- $errors = append $errors "orderRedis.orderWrite=stream needs writer.enabled=true: nothing would persist the orders" -}}
{{- end -}}
{{- if and (eq .Values.orderRedis.durability "replica") .Values.redis.enabled -}}
{{- $errors = append $errors "orderRedis.durability=replica needs a replicated Redis; the in-chart Redis has no replica (use fsync, or an external Redis)" -}}
{{- end -}}
{{- if and (eq .Values.orderRedis.durability "fsync") .Values.redis.enabled (ne .Values.redis.appendfsync "always") -}}
{{- $errors = append $errors "orderRedis.durability=fsync needs redis.appendfsync=always on the in-chart Redis (under everysec Redis 7.2+ answers WAITAOF only after its once-a-second fsync: orders would time out)" -}}
{{- end -}}
{{- if and .Values.load.enabled (eq .Values.load.target "legacy") (not .Values.legacy.enabled) -}}
{{- $errors = append $errors "load.target=legacy needs legacy.enabled=true" -}}
{{- end -}}
{{- if and .Values.redis.clusterMode .Values.redis.enabled -}}
{{- $errors = append $errors "redis.clusterMode=true is for an external Redis Cluster (e.g. ElastiCache cluster mode); the in-chart Redis is a single server (set redis.enabled=false)" -}}
{{- end -}}
{{- if and .Values.load.k6.testRun.runId (not (and .Values.load.enabled .Values.load.k6.enabled)) -}}
{{- $errors = append $errors "load.k6.testRun.runId needs load.enabled=true and load.k6.enabled=true (the TestRun runs the k6 scripts' ConfigMap)" -}}
{{- end -}}
{{- $a := .Values.auth -}}
{{- if eq $a.mode "jwt" -}}
{{- $sources := 0 -}}
{{- range (list $a.jwksUrl $a.existingSecret $a.devKeys.enabled) }}{{ if . }}{{ $sources = add1 $sources }}{{ end }}{{ end -}}
{{- if ne (int $sources) 1 -}}
{{- $errors = append $errors "auth.mode=jwt needs exactly one key source: auth.jwksUrl, auth.existingSecret or auth.devKeys.enabled" -}}
{{- end -}}
{{- if not (include "hotdeal.authIssuer" .) -}}
{{- $errors = append $errors "auth.mode=jwt needs auth.issuer (the identity provider's iss)" -}}
{{- end -}}
{{- if and .Values.load.enabled (not $a.devKeys.enabled) -}}
{{- $errors = append $errors "load.enabled with auth.mode=jwt needs auth.devKeys.enabled=true: the load jobs sign their buyers' tokens with the dev key" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.load.enabled (not .Values.workshopRoutes) (or .Values.load.ab.enabled (and .Values.load.k6.enabled (eq .Values.load.k6.script "workshop.js"))) -}}
{{- $errors = append $errors "the ab job and k6's workshop.js use the workshop's GET routes: set workshopRoutes=true (or load.ab.enabled=false and load.k6.script=spike.js)" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\nhotdeal: invalid values:\n- %s" (join "\n- " $errors)) -}}
{{- end -}}
{{- end -}}

{{/* Least privilege: a pod gets the NetworkPolicy label, the Secret and the URL of
     only the stores its process uses. Each helper below takes
     (dict "root" $ "database" true|false "redis" true|false). */}}

{{/* Pod labels that the NetworkPolicies of Redis and Oracle admit. */}}
{{- define "hotdeal.clientLabels" -}}
{{- if .redis }}
hotdeal.dev/redis-client: "true"
{{- end }}
{{- if .database }}
hotdeal.dev/database-client: "true"
{{- end }}
{{- end -}}

{{/* A hotdeal image: hotdeal.image (dict "root" $ "image" .Values.legacy.image) */}}
{{- define "hotdeal.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $registry := .root.Values.image.registry | default .root.Values.global.imageRegistry -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A third-party image: repository:tag */}}
{{/* An image of another project: (dict "root" $ "image" $v.image). With
     global.imageRegistry set, its registry host is replaced (a private mirror). */}}
{{- define "hotdeal.thirdPartyImage" -}}
{{- $repository := .image.repository -}}
{{- with .root.Values.global.imageRegistry -}}
{{- $parts := splitList "/" $repository -}}
{{- if and (gt (len $parts) 1) (or (contains "." (first $parts)) (contains ":" (first $parts))) -}}
{{- $repository = join "/" (rest $parts) -}}
{{- end -}}
{{- $repository = printf "%s/%s" . $repository -}}
{{- end -}}
{{- printf "%s:%s" $repository .image.tag -}}
{{- end -}}

{{- define "hotdeal.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "hotdeal.fullname" .)) -}}
{{- end -}}

{{- define "hotdeal.redisSecret" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "hotdeal.fullname" .)) -}}
{{- end -}}

{{- define "hotdeal.roomSecret" -}}
{{- .Values.orderRedis.waitingRoom.existingSecret | default (printf "%s-room" (include "hotdeal.fullname" .)) -}}
{{- end -}}

{{- define "hotdeal.pullSecrets" -}}
{{- with concat .Values.global.imagePullSecrets .Values.pullSecrets | uniq }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Connection settings: the URLs are read from the mounted Secrets (*_FILE), never
     put in the pod spec. */}}
{{- define "hotdeal.connectionEnv" -}}
{{- if .database }}
- name: HOTDEAL_DATABASE_URL_FILE
  value: /var/run/secrets/hotdeal/database/database-url
{{- end }}
{{- if .redis }}
- name: HOTDEAL_REDIS_URL_FILE
  value: /var/run/secrets/hotdeal/redis/redis-url
{{- if .root.Values.redis.clusterMode }}
- name: HOTDEAL_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- include "hotdeal.orderModelEnv" .root }}
{{- end }}
- name: HOTDEAL_HOLD_MS
  value: {{ .root.Values.event.holdMs | quote }}
- name: HOTDEAL_MAX_PER_ORDER
  value: {{ .root.Values.event.maxPerOrder | quote }}
{{- end -}}

{{/* What shapes the Redis order model, the same in every process that touches it: the
     service takes and waits, the writer waits and rebuilds, reset and repair rebuild
     (an Idempotency-Key rebuilt with another TTL would replay for a different time). */}}
{{- define "hotdeal.orderModelEnv" -}}
{{- $v := .Values.orderRedis }}
- name: HOTDEAL_IDEMPOTENCY_TTL_S
  value: {{ $v.idempotencyTtlSeconds | quote }}
- name: HOTDEAL_REDIS_DURABILITY
  value: {{ $v.durability | quote }}
- name: HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS
  value: {{ $v.durabilityTimeoutMs | quote }}
{{- end -}}

{{- define "hotdeal.secretVolumes" -}}
{{- if .database }}
- name: database-secret
  secret:
    secretName: {{ include "hotdeal.databaseSecret" .root }}
    items: [{key: {{ .root.Values.database.existingSecretKeys.url }}, path: database-url}]
{{- end }}
{{- if .redis }}
- name: redis-secret
  secret:
    secretName: {{ include "hotdeal.redisSecret" .root }}
    items: [{key: {{ .root.Values.redis.existingSecretKeys.url }}, path: redis-url}]
{{- end }}
- name: tmp
  emptyDir: {medium: Memory, sizeLimit: 64Mi}
{{- end -}}

{{- define "hotdeal.secretMounts" -}}
{{- if .database }}
- name: database-secret
  mountPath: /var/run/secrets/hotdeal/database
  readOnly: true
{{- end }}
{{- if .redis }}
- name: redis-secret
  mountPath: /var/run/secrets/hotdeal/redis
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "hotdeal.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "hotdeal.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* A random password that survives upgrades: reuse the key of the live Secret.
     hotdeal.password (dict "root" $ "secret" NAME "key" KEY ["length" 48]) */}}
{{- define "hotdeal.password" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum (.length | default 24) -}}
{{- end -}}
{{- end -}}

{{/* The pod of an ops command: hotdeal.opsPodSpec (dict "root" $ "args" (list ...)
     "apiAccess" true "redisOnly" true) - only the event runner gets a Kubernetes API
     token. */}}
{{- define "hotdeal.opsPodSpec" -}}
{{- $root := .root -}}
{{- /* reset, reconcile and the event runner read and write both stores; the room job
     (redisOnly) only Redis. */}}
{{- $stores := dict "root" $root "database" (not .redisOnly) "redis" true -}}
serviceAccountName: {{ include "hotdeal.component" (dict "root" $root "component" "ops") }}
automountServiceAccountToken: {{ .apiAccess | default false }}
restartPolicy: Never
{{- include "hotdeal.pullSecrets" $root }}
{{- include "hotdeal.podSecurity" $root | nindent 0 }}
containers:
  - name: ops
    image: {{ include "hotdeal.image" (dict "root" $root "image" $root.Values.orderRedis.image) }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["hotdeal-ops"]
    args: {{ toJson .args }}
    env:
      {{- include "hotdeal.connectionEnv" $stores | nindent 6 }}
      - name: HOTDEAL_LEGACY_SLOTS
        value: {{ $root.Values.legacy.slots | quote }}
      - name: HOTDEAL_NAMESPACE
        valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    {{- include "hotdeal.containerSecurity" $root | nindent 4 }}
    resources:
      {{- toYaml $root.Values.ops.resources | nindent 6 }}
    volumeMounts:
      {{- include "hotdeal.secretMounts" $stores | nindent 6 }}
volumes:
  {{- include "hotdeal.secretVolumes" $stores | nindent 2 }}
{{- end -}}

{{/* The URL the load generators target. */}}
{{- define "hotdeal.loadBaseUrl" -}}
{{- $l := .Values.load -}}
{{- $svc := include "hotdeal.component" (dict "root" . "component" $l.target) -}}
{{- $port := ternary .Values.legacy.service.port .Values.orderRedis.service.port (eq $l.target "legacy") -}}
{{- printf "http://%s:%v" $svc $port -}}
{{- end -}}

{{/* The k6 scripts' variables, one list for the CronJob and the TestRun runner. */}}
{{- define "hotdeal.k6Env" -}}
{{- $l := .Values.load -}}
- {name: BASE_URL, value: {{ include "hotdeal.loadBaseUrl" . | quote }}}
- {name: TARGET, value: {{ $l.target | quote }}}
- {name: ITERATIONS, value: {{ $l.requests | quote }}}
- {name: VUS, value: {{ $l.concurrency | quote }}}
- {name: RATE, value: {{ $l.k6.spike.rate | quote }}}
- {name: DURATION, value: {{ $l.k6.spike.duration | quote }}}
{{- if eq .Values.auth.mode "jwt" }}
- {name: TOKENS_FILE, value: /tokens/tokens.txt}
{{- end }}
{{- end -}}

{{/* A digest of the chart's own Secrets: in a pod's annotations, a changed password
     rolls the pods that read it. */}}
{{- define "hotdeal.secretsChecksum" -}}
{{- include (print .Template.BasePath "/secrets.yaml") . | sha256sum | trunc 16 -}}
{{- end -}}

{{/* The front's nginx.conf of a component (files/front.conf, the same text `make up`
     runs): nginx on the component's port, gunicorn behind it on loopback.
     hotdeal.frontConf (dict "root" $ "component" "legacy") */}}
{{- define "hotdeal.frontConf" -}}
{{- .root.Files.Get "files/front.conf" | replace "@LISTEN@" "8080" | replace "@UPSTREAM@" (printf "127.0.0.1:%s" (include "hotdeal.behindFrontPort" .)) | replace "@RUNDIR@" "/tmp" | replace "@READ_TIMEOUT@" (printf "%ds" (include "hotdeal.frontReadTimeout" . | int)) -}}
{{- end -}}

{{/* How long the front waits for the service: longer than its longest request
     (gunicorn's worker timeout; legacy queues on the hot row up to 120 s). The same
     numbers as hotdeal_local.front.READ_TIMEOUT_S (a test holds them together). */}}
{{- define "hotdeal.frontReadTimeout" -}}
{{- if eq .component "legacy" }}130{{ else }}35{{ end -}}
{{- end -}}

{{/* gunicorn's port behind the front. */}}
{{- define "hotdeal.behindFrontPort" -}}8081{{- end -}}

{{/* Buyer identity (hotdeal.identity): what legacy and order-redis need to verify
     tokens. The key is a mounted file; a JWKS URL is fetched by the services. */}}
{{- define "hotdeal.authDevSecret" -}}
{{- printf "%s-auth-dev" (include "hotdeal.fullname" .) -}}
{{- end -}}

{{- define "hotdeal.authIssuer" -}}
{{- .Values.auth.issuer | default (ternary "hotdeal-dev" "" .Values.auth.devKeys.enabled) -}}
{{- end -}}

{{- define "hotdeal.authEnv" -}}
{{- $a := .Values.auth }}
- {name: HOTDEAL_AUTH, value: {{ $a.mode | quote }}}
{{- if eq $a.mode "jwt" }}
- {name: HOTDEAL_AUTH_ISSUER, value: {{ include "hotdeal.authIssuer" . | quote }}}
- {name: HOTDEAL_AUTH_AUDIENCE, value: {{ $a.audience | quote }}}
- {name: HOTDEAL_AUTH_LEEWAY_S, value: {{ $a.leewaySeconds | quote }}}
- {name: HOTDEAL_AUTH_BUYER_CLAIM, value: {{ $a.buyerClaim | quote }}}
- {name: HOTDEAL_AUTH_ACT_FOR_SCOPE, value: {{ $a.actForScope | quote }}}
{{- if $a.jwksUrl }}
- {name: HOTDEAL_AUTH_JWKS_URL, value: {{ $a.jwksUrl | quote }}}
- {name: HOTDEAL_AUTH_JWKS_REFRESH_S, value: {{ $a.jwksRefreshSeconds | quote }}}
{{- else }}
- {name: HOTDEAL_AUTH_PUBLIC_KEY_FILE, value: /var/run/secrets/hotdeal/auth/public-key.pem}
{{- end }}
{{- end }}
- {name: HOTDEAL_WORKSHOP_ROUTES, value: {{ .Values.workshopRoutes | quote }}}
{{- end -}}

{{/* The verifying key's volume and mount (none with a JWKS URL or auth off). */}}
{{- define "hotdeal.authKeyMounted" -}}
{{- and (eq .Values.auth.mode "jwt") (not .Values.auth.jwksUrl) | ternary "true" "" -}}
{{- end -}}

{{- define "hotdeal.authVolume" -}}
{{- if include "hotdeal.authKeyMounted" . }}
- name: auth-key
  secret:
    {{- if .Values.auth.existingSecret }}
    secretName: {{ .Values.auth.existingSecret }}
    items: [{key: {{ .Values.auth.existingSecretKey }}, path: public-key.pem}]
    {{- else }}
    secretName: {{ include "hotdeal.authDevSecret" . }}
    items: [{key: tls.crt, path: public-key.pem}]
    {{- end }}
{{- end }}
{{- end -}}

{{- define "hotdeal.authMount" -}}
{{- if include "hotdeal.authKeyMounted" . }}
- {name: auth-key, mountPath: /var/run/secrets/hotdeal/auth, readOnly: true}
{{- end }}
{{- end -}}

{{/* The load jobs' tokens: an init container mints them with the dev signing key into
     an emptyDir (hotdeal-ops token), the load generator reads /tokens/tokens.txt.
     hotdeal.loadTokensInit (dict "root" $ "users" N ["testRun" true]) */}}
{{- define "hotdeal.loadTokensInit" -}}
{{- $root := .root -}}
- name: tokens
  image: {{ include "hotdeal.image" (dict "root" $root "image" $root.Values.orderRedis.image) }}
  {{- if not .testRun }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  {{- end }}
  command: ["/bin/sh", "-c", "hotdeal-ops token --users {{ .users }} --prefix load- > /tokens/tokens.txt"]
  env:
    - {name: HOTDEAL_SIGNING_KEY_FILE, value: /var/run/secrets/hotdeal/signing/tls.key}
    - {name: HOTDEAL_AUTH_ISSUER, value: {{ include "hotdeal.authIssuer" $root | quote }}}
    - {name: HOTDEAL_AUTH_AUDIENCE, value: {{ $root.Values.auth.audience | quote }}}
  {{- /* The k6-operator's InitContainer has no pullPolicy or securityContext: it copies
       the runner's (a strict create would refuse the unknown fields). */}}
  {{- if not .testRun }}
  {{- include "hotdeal.containerSecurity" $root | nindent 2 }}
  {{- end }}
  resources:
    {{- toYaml $root.Values.ops.resources | nindent 4 }}
  volumeMounts:
    - {name: signing-key, mountPath: /var/run/secrets/hotdeal/signing, readOnly: true}
    - {name: tokens, mountPath: /tokens}
{{- end -}}

{{- define "hotdeal.loadTokensVolumes" -}}
- name: signing-key
  secret:
    secretName: {{ include "hotdeal.authDevSecret" . }}
    items: [{key: tls.key, path: tls.key}]
- name: tokens
  emptyDir: {medium: Memory, sizeLimit: 64Mi}
{{- end -}}

{{/* order-redis's gunicorn workers: orderRedis.workers, or from the CPU request (as
     Kubernetes reads it: the limit when no request is set; whole or decimal CPUs, or
     millicores): 4 sync workers a CPU in write-behind mode, 2 gthread workers in inline
     mode (each runs 32 threads with a database connection each); at least 1. Another
     spelling fails the render: set orderRedis.workers. */}}
{{- define "hotdeal.orderRedisWorkers" -}}
{{- $v := .Values.orderRedis -}}
{{- if gt (int $v.workers) 0 -}}
{{- $v.workers -}}
{{- else -}}
{{- $resources := $v.resources | default dict -}}
{{- $cpu := dig "requests" "cpu" "" $resources | toString -}}
{{- if not $cpu -}}{{- $cpu = dig "limits" "cpu" "1" $resources | toString -}}{{- end -}}
{{- $milli := 0 -}}
{{- if regexMatch "^[0-9]+m$" $cpu -}}
{{- $milli = trimSuffix "m" $cpu | atoi -}}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?$" $cpu -}}
{{- $milli = mulf (float64 $cpu) 1000 | int -}}
{{- else -}}
{{- fail (printf "orderRedis.resources CPU %q: set orderRedis.workers (this chart reads whole or decimal CPUs and millicores)" $cpu) -}}
{{- end -}}
{{- $perCpu := ternary 2 4 (eq $v.orderWrite "inline") -}}
{{- max 1 (div (mul $perCpu $milli) 1000) -}}
{{- end -}}
{{- end -}}
