# kinfer images: one build stage, one small static runtime image per binary.
#   docker build --target operator -t kinfer/operator:dev .
#   docker build --target gateway  -t kinfer/gateway:dev .
#   docker build --target vllm-sim -t kinfer/vllm-sim:dev .   (tests only)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The gateway is the plain release build, as `make test` checks it. The profile-guided build
# (`make gateway-pgo`, docs/gateway.md) is optional and not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kinfer-operator -p kinfer-gateway -p kinfer-vllm-sim \
 && mkdir -p /out \
 && cp target/release/kinfer-operator target/release/kinfer-gateway target/release/vllm-sim /out/

# distroless/cc: glibc + libgcc only, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/kinfer-operator /usr/local/bin/kinfer-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kinfer-operator"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /out/kinfer-gateway /usr/local/bin/kinfer-gateway
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/kinfer-gateway"]

# The vLLM stand-in, entrypoint-compatible with vllm/vllm-openai (`vllm serve`
# arguments), for kind clusters without GPUs.
FROM gcr.io/distroless/cc-debian12:nonroot AS vllm-sim
COPY --from=build /out/vllm-sim /usr/local/bin/vllm-sim
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/vllm-sim"]
