# The example second worker (worker/examples/example_worker.rs): one static
# binary on an empty image (nothing is pulled). It needs no Docker socket.
# Build context: a staging folder made by docker/build-images.sh.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin \
    NATS_URL=nats://nats:4222
CMD ["example-worker"]
