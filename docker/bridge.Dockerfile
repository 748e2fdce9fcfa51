# The device's bridge: one static binary on an empty image (nothing is pulled).
# Build context: a staging folder made by docker/build-images.sh.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin \
    DEVICE_PRIVATE_KEY_PATH=/keys/device_private.pem \
    CLOUD_PUBLIC_KEY_PATH=/keys/cloud_public.pem \
    NATS_URL=nats://nats:4222 \
    BRIDGE_STATE_FILE=/tmp/bridge-state.json
CMD ["bridge"]
