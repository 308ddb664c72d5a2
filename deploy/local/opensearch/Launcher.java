// Runs one OpenSearch 2.19 node in this JVM from Maven Central jars, without the
// OpenSearch distribution (no bin/, no modules/ folder, no bootstrap checks).
//
// The modules that the distribution would load from modules/ are loaded here as
// classpath plugins, which is what org.opensearch.node.Node's protected
// constructor is for (the test framework's MockNode does the same).
//
// Usage (deploy/local/services.sh compiles this into the cache and runs it):
//   java -cp '<classes>:<lib>/*' Launcher <path.home>
// Node settings are read from <path.home>/config/opensearch.yml and logging from
// <path.home>/config/log4j2.properties, both written by services.sh.

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

public class Launcher {

    // Plugin classes of the Maven artifacts named in deploy/local/opensearch/pom.xml.
    private static final String[] PLUGINS = {
        "org.opensearch.transport.Netty4Plugin",                 // transport-netty4-client: HTTP
        "org.opensearch.analysis.common.CommonAnalysisPlugin",   // analysis-common: german, english, ...
        "org.opensearch.index.mapper.MapperExtrasPlugin",        // mapper-extras-client
        "org.opensearch.percolator.PercolatorPlugin",            // percolator-client
        "org.opensearch.painless.PainlessPlugin",                // lang-painless
        "org.opensearch.index.reindex.ReindexPlugin",            // reindex-client
        "org.opensearch.script.mustache.MustachePlugin",         // lang-mustache-client
        "org.opensearch.ingest.common.IngestCommonPlugin",       // ingest-common
    };

    static final class LocalNode extends Node {
        LocalNode(Environment env, List<Class<? extends Plugin>> plugins) {
            super(env, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Launcher <path.home>");
            System.exit(2);
        }
        Path home = Paths.get(args[0]).toAbsolutePath();
        Path config = home.resolve("config");
        // PluginsService looks at these; they stay empty.
        Files.createDirectories(home.resolve("modules"));
        Files.createDirectories(home.resolve("plugins"));

        Settings input = Settings.builder().put("path.home", home.toString()).build();
        Environment env = InternalSettingsPreparer.prepareEnvironment(
            input, Collections.emptyMap(), config, () -> "newswatch-local");

        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(env.settings()));
        LogConfigurator.configure(env);

        List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : PLUGINS) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }

        final Node node = new LocalNode(env, plugins);
        final CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "newswatch-opensearch-shutdown"));

        try {
            node.start();
        } catch (Throwable t) {
            t.printStackTrace();
            System.exit(1);
        }
        System.out.println("newswatch: OpenSearch node started, home=" + home);
        stopped.await();
    }
}
