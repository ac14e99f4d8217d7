# Made by deploy/image/build.sh from Debian's prometheus and the libraries it links.
FROM scratch
COPY --chown=10003:10003 rootfs/ /
USER 10003:10003
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=0.0.0.0:9090"]
