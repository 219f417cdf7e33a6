# For those who build with Docker: the same file layout as `make images` (deploy/images),
# one platform per build (docker buildx build --platform linux/amd64,linux/arm64 for both).
# `make images` needs no daemon and is the reproducible build; this one is not byte-for-byte
# the same (Docker sets its own layer metadata).
FROM golang:1.26.8 AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=0.1.0
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOFLAGS=-mod=readonly \
    go build -trimpath -ldflags "-s -w -X github.com/execgate/execgate/internal/version.Version=$VERSION" \
    -o /out/ ./cmd/execgate-controller ./cmd/execgate-agent
RUN mkdir -p /root-fs/etc /root-fs/tmp /root-fs/usr/local/bin /root-fs/usr/share/doc/execgate \
 && chmod 1777 /root-fs/tmp \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /root-fs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' > /root-fs/etc/group \
 && cp /out/execgate-controller /out/execgate-agent /root-fs/usr/local/bin/ \
 && cp LICENSE /root-fs/usr/share/doc/execgate/LICENSE \
 && cp LICENSES/GPL-2.0 /root-fs/usr/share/doc/execgate/GPL-2.0

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="execgate" \
      org.opencontainers.image.source="https://github.com/execgate/execgate" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0 AND GPL-2.0-only"
COPY --from=build /root-fs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
WORKDIR /
