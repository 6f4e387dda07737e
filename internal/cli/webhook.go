//go:build !proxyonly

package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/inject"
)

// runWebhook serves the mutating admission webhook over TLS until ctx
// ends, then drains the reviews in flight.
func runWebhook(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "inject webhook", "inject webhook --policy POLICY --cert-file CERT --key-file KEY [--listen ADDR]")
	policy := fs.String("policy", "", "the platform policy (kind: PlatformPolicy)")
	certFile := fs.String("cert-file", "", "serving certificate (PEM), reloaded when the file changes")
	keyFile := fs.String("key-file", "", "its private key (PEM)")
	listen := fs.String("listen", ":8443", "address to serve on")
	version := fs.String("version", "", "version of pods that name none (default: their label app.kubernetes.io/version, else none)")
	mkLog := logFlags(fs, e, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usageErr("unexpected argument %q", fs.Arg(0))
	case *policy == "":
		return usageErr("--policy POLICY is required")
	case *certFile == "" || *keyFile == "":
		return usageErr("--cert-file and --key-file are required: the API server calls webhooks over TLS only")
	}
	if *version != "" {
		if err := inject.ValidVersion(*version); err != nil {
			return usageErr("--version: %v", err)
		}
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	pb, err := os.ReadFile(*policy)
	if err != nil {
		return usageErr("%v", err)
	}
	pol, diags := inject.LoadPolicy(*policy, bytes.NewReader(pb))
	if err := report(e, diags, "text"); err != nil {
		return err
	}
	cert := &certs.FileCert{CertFile: *certFile, KeyFile: *keyFile, Logger: log}
	if err := cert.Load(); err != nil {
		return usageErr("%v", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(inject.WebhookPath, &inject.Webhook{Injector: &inject.Injector{Policy: pol, Version: *version}, Logger: log})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         certs.EdgeServerConfig(cert.GetCertificate, nil),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
	}
	log.Info("sidecar injection webhook serving", "addr", ln.Addr().String(), "path", inject.WebhookPath)
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	// The API server waits at most timeoutSeconds (10) for a review.
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// runWebhookConfig prints the MutatingWebhookConfiguration for kubectl
// apply.
func runWebhookConfig(e *env, args []string) error {
	fs := newFlags(e, "inject webhook-config", "inject webhook-config --ca-file CA (--service NAME --namespace NS | --url URL)")
	var c inject.WebhookConfig
	caFile := fs.String("ca-file", "", "PEM of the CA that signed the webhook's serving certificate")
	fs.StringVar(&c.Name, "name", "trellis-sidecar-injector", "name of the MutatingWebhookConfiguration")
	fs.StringVar(&c.Service, "service", "", "the webhook's Kubernetes Service (port 443)")
	fs.StringVar(&c.Namespace, "namespace", "", "the Service's namespace")
	fs.StringVar(&c.URL, "url", "", "the webhook's URL, when it runs outside the cluster")
	fs.BoolVar(&c.FailOpen, "fail-open", false, "let pods start without the sidecar when the webhook is down (failurePolicy Ignore)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *caFile == "" {
		return usageErr("--ca-file is required")
	}
	ca, err := os.ReadFile(*caFile)
	if err != nil {
		return usageErr("%v", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return usageErr("--ca-file %s: no PEM certificate in it", *caFile)
	}
	c.CABundle = ca
	cfg, err := c.Configuration()
	if err != nil {
		return usageErr("%v", err)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	_, err = e.stdout.Write(b)
	return err
}
