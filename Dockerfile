# The gpuprobe image for the Kubernetes DaemonSets (deploy/kubernetes/). It holds no driver
# library: the NVIDIA container runtime mounts libnvidia-ml and libcuda from the host.
#   docker build -t <registry>/gpuprobe:0.1.0 .
FROM python:3.11-slim
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src
USER 65534:65534
EXPOSE 14787
ENTRYPOINT ["gpuprobe"]
CMD ["run"]
