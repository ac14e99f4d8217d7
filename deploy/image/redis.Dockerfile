# Made by deploy/image/build.sh from Debian's redis-server and the libraries it links.
FROM scratch
COPY --chown=10002:10002 rootfs/ /
USER 10002:10002
EXPOSE 6379
VOLUME /data
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["/usr/local/bin/redis-cli", "ping"]
ENTRYPOINT ["/usr/local/bin/redis-server"]
CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", "--appendonly", "yes"]
