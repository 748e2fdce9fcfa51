# The cloud: one static binary on an empty image (nothing is pulled).
# Build context: a staging folder made by docker/build-images.sh.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin \
    CLOUD_LISTEN=0.0.0.0:8080 \
    CLOUD_PRIVATE_KEY_PATH=/keys/cloud_private.pem \
    DATABASE_URL=sqlite:///data/cloud.db \
    CLOUD_ADMIN_TOKEN_FILE=/data/admin.token
EXPOSE 8080
CMD ["cloud", "serve"]
