# The scaled cloud stack's load balancer: Debian's haproxy with exactly the
# shared libraries ldd lists for it and docker/haproxy.cfg, on an empty image
# (nothing is pulled).
# Build context: a staging folder made by docker/build-images.sh.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/sbin
EXPOSE 8080
# -db: in the foreground, logging to stdout as the configuration says.
CMD ["haproxy", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
