package control

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/sidecar"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The server's DNS answers a registered healthy instance's edge listener
// and drops it once its app stops answering its health check; it refuses
// names outside the mesh's domains.
func TestServerDNSFollowsHealth(t *testing.T) {
	dir := t.TempDir()
	dnsAddr := "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
	srv, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Out: io.Discard, LeaseTTL: 2 * time.Second, DNSListen: dnsAddr})
	if err != nil {
		t.Fatal(err)
	}
	server := startRole(srv.Run)
	defer server.stop(t, "control plane")
	select {
	case <-srv.Ready():
	case err := <-server.done:
		t.Fatalf("control plane: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("control plane not ready")
	}
	api := adminClient(t, srv, dir)
	if _, err := api.Apply(t.Context(), []v1.Resource{
		{Kind: v1.KindMesh, Name: v1.MeshName, Mesh: &v1.MeshSpec{DNS: &v1.MeshDNS{Domains: []string{"demo.local"}}}},
		{Kind: v1.KindService, Name: "web", Service: &v1.ServiceSpec{Hostnames: []string{"web.hosted.local"}}},
	}); err != nil {
		t.Fatal(err)
	}
	appL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := appL.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer appL.Close()
	edgePort := trellistest.FreePort(t)
	web := runProxy(t, sidecar.Config{
		Service: "web", Instance: "web-1", AppAddr: appL.Addr().String(),
		TokenFile: serviceToken(t, api, dir, "web"), Server: srv.Addr(), ServerCAFile: filepath.Join(dir, "ca.pem"),
		Edge:           &sidecar.Edge{Listen: "127.0.0.1:" + strconv.Itoa(edgePort), DNSNames: []string{"web.hosted.local"}},
		HealthInterval: 100 * time.Millisecond, DrainTimeout: time.Second,
	})
	defer web.stop(t, "web")

	lookup := func(name string, qtype uint16) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, dnsAddr)
		return r, err
	}
	trellistest.Eventually(t, 10*time.Second, "web's edge listener answered", func() error {
		r, err := lookup("web.demo.local.", dns.TypeSRV)
		if err != nil {
			return err
		}
		if len(r.Answer) != 1 {
			return fmt.Errorf("answer %v", r.Answer)
		}
		if srv := r.Answer[0].(*dns.SRV); srv.Port != uint16(edgePort) || srv.Target != "ip-127-0-0-1.web.demo.local." {
			return fmt.Errorf("SRV %v, want port %d", srv, edgePort)
		}
		return nil
	})
	if r, err := lookup("Web.Hosted.Local.", dns.TypeA); err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Errorf("hostname: %v %v", r, err)
	}
	if r, err := lookup("www.example.com.", dns.TypeA); err != nil || r.Rcode != dns.RcodeRefused || r.RecursionAvailable {
		t.Errorf("outside name: %v %v, want REFUSED without RA", r, err)
	}

	// The app dies: its health check fails and the answer goes, well
	// within 10 s.
	appL.Close()
	start := time.Now()
	trellistest.Eventually(t, 10*time.Second, "the unhealthy instance left the answer", func() error {
		r, err := lookup("web.demo.local.", dns.TypeA)
		if err != nil {
			return err
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			return fmt.Errorf("%s %v", dns.RcodeToString[r.Rcode], r.Answer)
		}
		return nil
	})
	t.Logf("left the answer %v after the app stopped", time.Since(start).Round(time.Millisecond))
}
