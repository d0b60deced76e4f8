// Readiness probe for scripts/infra: a real CQL query against the local Cassandra node,
// with the DataStax java driver 3.x (shaded) that cassandra-all itself depends on.
// Usage: java -cp <cassandra classpath>:<classes> CqlProbe <host> <port> <timeout-ms>
// Exit 0 and print the release version when `SELECT release_version FROM system.local` answers.

import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.SocketOptions;
import com.datastax.driver.core.policies.FallthroughRetryPolicy;

public class CqlProbe {
    public static void main(String[] args) {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 19042;
        int timeoutMs = args.length > 2 ? Integer.parseInt(args[2]) : 10000;
        SocketOptions so = new SocketOptions()
                .setConnectTimeoutMillis(Math.min(timeoutMs, 5000))
                .setReadTimeoutMillis(timeoutMs);
        try (Cluster cluster = Cluster.builder()
                .addContactPoint(host)
                .withPort(port)
                .withSocketOptions(so)
                .withRetryPolicy(FallthroughRetryPolicy.INSTANCE)
                .withoutJMXReporting()
                .withoutMetrics()
                .build();
             Session session = cluster.connect()) {
            Row row = session.execute("SELECT release_version FROM system.local").one();
            if (row == null) {
                System.err.println("cql query on system.local returned no row");
                System.exit(1);
            }
            System.out.println("cassandra cql ok: release_version " + row.getString("release_version"));
        } catch (RuntimeException e) {
            System.err.println("cql query failed: " + e);
            System.exit(1);
        }
    }
}
