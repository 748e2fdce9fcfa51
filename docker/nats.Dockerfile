# The device-local broker: Debian's nats-server with exactly the shared
# libraries ldd lists for it, on an empty image (nothing is pulled).
# Build context: a staging folder made by docker/build-images.sh.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/sbin
EXPOSE 4222
CMD ["nats-server", "--addr", "0.0.0.0", "--port", "4222"]
