"""A real Kubernetes node on this machine: kube-scheduler, a kubelet registered as a Node,
containerd with runc, CNI bridge networking, and images built here from Debian packages and
source (no registry can be reached). See docs/localcluster.md, "The real node"."""
