// Readiness probe for the local Kafka broker: one real metadata round trip
// (DescribeCluster) through the Java admin client from the broker's own jars.
// Usage: java -cp '<classes>:<lib>/*' Probe 127.0.0.1:9092 [timeout-ms]
// Exit 0 and print "cluster=<id> nodes=<n> controller=<id>" when the broker answers.

import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;

public class Probe {
    public static void main(String[] args) {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        int timeoutMs = args.length > 1 ? Integer.parseInt(args[1]) : 5000;
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, timeoutMs);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "newswatch-probe");
        try (Admin admin = Admin.create(p)) {
            DescribeClusterResult r = admin.describeCluster(
                new DescribeClusterOptions().timeoutMs(timeoutMs));
            String id = r.clusterId().get(timeoutMs, TimeUnit.MILLISECONDS);
            int nodes = r.nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            var controller = r.controller().get(timeoutMs, TimeUnit.MILLISECONDS);
            if (nodes < 1) {
                System.err.println("no brokers in metadata");
                System.exit(1);
            }
            System.out.println("cluster=" + id + " nodes=" + nodes
                + " controller=" + (controller == null ? "none" : controller.idString()));
            System.exit(0);
        } catch (Exception e) {
            System.err.println("probe failed: " + e);
            System.exit(1);
        }
    }
}
